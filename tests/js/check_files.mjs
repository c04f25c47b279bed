// What every checker here shares: read each FILE named on the command line, run the
// checker's checkText on it, and print one JSON array of results, in argument order.
import { readFileSync } from "node:fs";

export function message(err) {
  return err && err.message ? `${err.name || "Error"}: ${err.message}` : String(err);
}

export function checkFiles(script, checkText, argv = process.argv.slice(2)) {
  if (argv.length === 0) {
    process.stderr.write(`usage: node ${script} FILE [FILE...]\n`);
    process.exit(2);
  }
  const out = argv.map((file) => {
    let text;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      return { file, errors: [`read: ${message(err)}`] };
    }
    return { file, ...checkText(text) };
  });
  process.stdout.write(JSON.stringify(out));
}
