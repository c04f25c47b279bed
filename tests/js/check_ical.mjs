// Parse .ics files with ical.js (the parser Thunderbird uses) and print one
// JSON summary per file, as a JSON array on stdout, in argument order.
//
// Usage: node check_ical.mjs FILE [FILE...]
//
// ICAL.parse alone is lenient (it keeps many bad values as they are), so every
// VEVENT is also read the way a calendar client would: through ICAL.Event,
// its start/end times, its first RRULE occurrences, and a re-serialisation.
// Any exception becomes an entry in "errors"; the process still exits 0 so
// that the Python side sees every file's result. A non-zero exit means the
// script itself failed (bad arguments, missing ical.js).

import { checkFiles, message } from "./check_files.mjs";
import ICAL from "ical.js";

/** How many RRULE occurrences to expand per event: enough to hit a bad rule. */
const RRULE_PROBE = 3;

/** Calendar-level properties that are TEXT (RFC 7986 NAME and DESCRIPTION; the X-WR-*
 * names Apple and Google write): ical.js knows none of them and would hand their values
 * over still escaped, so they are declared here, as Thunderbird reads them. */
const CALENDAR_TEXT = ["name", "description", "x-wr-calname", "x-wr-caldesc"];
for (const name of CALENDAR_TEXT) {
  ICAL.design.icalendar.property[name] = { defaultType: "text" };
}

function checkText(text) {
  const result = {
    vcalendars: 0,
    vevents: 0,
    uids: [],
    summaries: [],
    starts: [],
    ends: [],
    tzids: [],
    vtimezones: [],
    calendar: {},
    errors: [],
  };
  let jcal;
  try {
    jcal = ICAL.parse(text);
  } catch (err) {
    result.errors.push(`parse: ${message(err)}`);
    return result;
  }
  // ICAL.parse returns one jCal array, or a list of them when the text holds
  // several top-level components; a feed must be exactly one VCALENDAR.
  const roots = Array.isArray(jcal) && typeof jcal[0] === "string" ? [jcal] : jcal;
  if (!Array.isArray(roots) || roots.length !== 1) {
    result.errors.push(`expected exactly one top-level component, got ${Array.isArray(roots) ? roots.length : 0}`);
  }
  for (const rootJcal of Array.isArray(roots) ? roots : []) {
    let root;
    try {
      root = new ICAL.Component(rootJcal);
    } catch (err) {
      result.errors.push(`component: ${message(err)}`);
      continue;
    }
    if (root.name !== "vcalendar") {
      result.errors.push(`top-level component is ${root.name}, not vcalendar`);
      continue;
    }
    result.vcalendars += 1;
    checkCalendar(root, result);
  }
  return result;
}

function checkCalendar(root, result) {
  for (const name of CALENDAR_TEXT) {
    const props = root.getAllProperties(name);
    if (props.length) result.calendar[name.toUpperCase()] = props.map((p) => p.getValues().join(","));
  }
  // Register the calendar's own VTIMEZONEs so TZID-relative times resolve;
  // the service is global, so reset it per calendar.
  ICAL.TimezoneService.reset();
  for (const vtz of root.getAllSubcomponents("vtimezone")) {
    try {
      const tz = new ICAL.Timezone(vtz);
      result.vtimezones.push(tz.tzid);
      ICAL.TimezoneService.register(tz);
    } catch (err) {
      result.errors.push(`VTIMEZONE: ${message(err)}`);
    }
  }
  const tzids = new Set();
  for (const comp of root.getAllSubcomponents("vevent")) {
    result.vevents += 1;
    let uid = null;
    try {
      uid = comp.getFirstPropertyValue("uid");
    } catch {
      // reported below, when the properties are decoded
    }
    const where = uid ? `VEVENT ${uid}` : `VEVENT #${result.vevents}`;
    // Decode every property first so an error names the property and its
    // raw text (ICAL.Event's own messages show only a mangled value).
    let badProperty = false;
    for (const prop of comp.getAllProperties()) {
      const tzid = prop.getParameter("tzid");
      if (tzid) tzids.add(tzid);
      try {
        prop.getValues();
      } catch (err) {
        badProperty = true;
        result.errors.push(`${where}: ${prop.name.toUpperCase()}: ${message(err)}`);
      }
    }
    if (badProperty) continue;
    try {
      const event = new ICAL.Event(comp);
      result.uids.push(event.uid);
      result.summaries.push(event.summary);
      const start = event.startDate;
      if (!start) throw new Error("no DTSTART");
      const end = event.endDate;
      for (const [name, t] of [["DTSTART", start], ["DTEND/DURATION", end]]) {
        if (!t) continue;
        if (!Number.isFinite(t.toUnixTime())) throw new Error(`${name} is not a valid time: ${t.toString()}`);
      }
      result.starts.push(start.toString());
      result.ends.push(end ? end.toString() : null);
      if (event.isRecurring()) {
        const it = event.iterator();
        for (let i = 0; i < RRULE_PROBE; i++) {
          const next = it.next();
          if (!next) break;
          if (!Number.isFinite(next.toUnixTime())) throw new Error(`bad recurrence instance ${next.toString()}`);
        }
      }
      comp.toString();
    } catch (err) {
      result.errors.push(`${where}: ${message(err)}`);
    }
  }
  result.tzids = [...tzids].sort();
  try {
    root.toString();
  } catch (err) {
    result.errors.push(`serialise: ${message(err)}`);
  }
}

checkFiles("check_ical.mjs", checkText);
