// Parse .ics files with node-ical (the parser of MagicMirror's calendar module and many
// JavaScript dashboards) and print one JSON summary per file, as a JSON array on stdout, in
// argument order.
//
// Usage: node check_node_ical.mjs FILE [FILE...]
//
// A dashboard reads each VEVENT's fields as they come out of node-ical and prints them, so
// what matters is their JavaScript type: "url" must be a string (a URL;VALUE=URI comes out
// as {params, val}, printed as "[object Object]"), "summary" and "uid" strings, "start" and
// "end" Dates. Each field that is not is an entry in "errors". A recurring event is expanded
// with node-ical's own expandRecurringEvent over RRULE_YEARS years around now; none
// expanding is an error too. node-ical throws on little (it is tolerant), so a parse
// exception is reported as well. The process exits 0 so the Python side sees every file.

import { checkFiles, message } from "./check_files.mjs";
import ical from "node-ical";

const RRULE_YEARS = 3;
const YEAR_MS = 365.25 * 24 * 3600 * 1000;

function iso(value) {
  return value instanceof Date && Number.isFinite(value.getTime()) ? value.toISOString() : null;
}

function checkText(text) {
  const result = { vevents: 0, uids: [], summaries: [], urls: [], starts: [], ends: [], datetypes: [],
                   recurring: {}, errors: [] };
  let data;
  try {
    data = ical.sync.parseICS(text);
  } catch (err) {
    result.errors.push(`parse: ${message(err)}`);
    return result;
  }
  const now = Date.now();
  const from = new Date(now - RRULE_YEARS * YEAR_MS);
  const to = new Date(now + RRULE_YEARS * YEAR_MS);
  for (const event of Object.values(data)) {
    if (!event || event.type !== "VEVENT") continue;
    result.vevents += 1;
    const where = `VEVENT ${typeof event.uid === "string" ? event.uid : `#${result.vevents}`}`;
    for (const name of ["uid", "summary"]) {
      if (typeof event[name] !== "string") {
        result.errors.push(`${where}: ${name} is ${JSON.stringify(event[name])}, not a string`);
      }
    }
    if (event.url !== undefined && typeof event.url !== "string") {
      result.errors.push(`${where}: url is ${JSON.stringify(event.url)}, not a string (a dashboard shows "${String(event.url)}")`);
    }
    for (const name of ["start", "end"]) {
      if (iso(event[name]) === null) result.errors.push(`${where}: ${name} is not a valid Date: ${String(event[name])}`);
    }
    result.uids.push(event.uid);
    result.summaries.push(event.summary);
    result.urls.push(event.url === undefined ? null : event.url);
    result.starts.push(iso(event.start));
    result.ends.push(iso(event.end));
    result.datetypes.push(event.datetype ?? null);
    if (event.rrule) {
      try {
        const instances = ical.expandRecurringEvent(event, { from, to });
        result.recurring[event.uid] = instances.map((i) => iso(i.start));
        if (instances.length === 0) result.errors.push(`${where}: RRULE ${event.rrule.toString()} expands to nothing`);
      } catch (err) {
        result.errors.push(`${where}: expanding RRULE: ${message(err)}`);
      }
    }
  }
  return result;
}

checkFiles("check_node_ical.mjs", checkText);
