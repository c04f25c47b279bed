<?php
// Parse .ics files with sabre/vobject (the parser of Nextcloud and Baikal) and print one JSON
// summary per file, as a JSON array on stdout, in argument order.
//
// Usage: php sabre_check.php FILE [FILE...]
//
// sabre/vobject 4 is what Nextcloud ships. It comes from tests/php/vendor (composer install
// --working-dir tests/php, from Packagist), else from source trees of sabre/vobject 4 and
// sabre/xml under the directory ICSFEED_SABRE_SRC names (vobject/lib, xml/lib). Debian 12's php-sabre-vobject is 2.1, which
// cannot judge TEXT: its reader unescapes only \\ and \n, so it shows every escaped comma of a
// correct feed as "\," (SUMMARY too), and it has no multi-valued TEXT.
//
// For the VCALENDAR's own properties it prints every value sabre/vobject sees (getParts():
// a TEXT value with an unescaped comma is several values, and Nextcloud shows the first) and
// the joined value; for each VEVENT its UID, SUMMARY, URL and DESCRIPTION. Parse errors and
// Component::validate() findings of level 3 (errors, not warnings) go to "errors"; the
// process still exits 0 so the Python side sees every file's result.

$vendor = __DIR__ . '/php/vendor/autoload.php';
$src = getenv('ICSFEED_SABRE_SRC');
if (is_file($vendor)) {
    require_once $vendor;
} elseif ($src !== false && is_dir("$src/vobject/lib") && is_dir("$src/xml/lib")) {
    // PSR-4, as composer.json of sabre/vobject and sabre/xml map them
    spl_autoload_register(function (string $class) use ($src): void {
        foreach (['Sabre\\VObject\\' => "$src/vobject/lib", 'Sabre\\Xml\\' => "$src/xml/lib"] as $prefix => $dir) {
            if (strncmp($class, $prefix, strlen($prefix)) === 0) {
                $file = $dir . '/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
                if (is_file($file)) {
                    require_once $file;
                }
            }
        }
    });
} else {
    fwrite(STDERR, "sabre/vobject 4 is not installed: run `composer install --working-dir tests/php` "
        . "(scripts/install-test-deps.sh), or set ICSFEED_SABRE_SRC to a directory holding "
        . "vobject/lib and xml/lib of sabre/vobject 4 and sabre/xml\n");
    exit(3);
}
if (!class_exists('Sabre\\VObject\\Version') || version_compare(Sabre\VObject\Version::VERSION, '4.0.0', '<')) {
    fwrite(STDERR, "sabre/vobject 4 is needed (found " . (class_exists('Sabre\\VObject\\Version') ? Sabre\VObject\Version::VERSION : 'none') . ")\n");
    exit(3);
}

use Sabre\VObject\Reader;

function summarise(string $text): array
{
    $result = ['version' => Sabre\VObject\Version::VERSION, 'calendar' => [], 'vevents' => 0, 'uids' => [], 'summaries' => [], 'urls' => [],
               'descriptions' => [], 'errors' => []];
    try {
        $cal = Reader::read($text);
    } catch (Throwable $e) {
        $result['errors'][] = 'parse: ' . get_class($e) . ': ' . $e->getMessage();
        return $result;
    }
    if ($cal->name !== 'VCALENDAR') {
        $result['errors'][] = "top-level component is {$cal->name}, not VCALENDAR";
        return $result;
    }
    foreach ($cal->children() as $child) {
        if ($child instanceof Sabre\VObject\Property) {
            $result['calendar'][$child->name] = ['parts' => $child->getParts(), 'value' => (string) $child->getValue()];
        }
    }
    foreach ($cal->select('VEVENT') as $event) {
        $result['vevents'] += 1;
        $result['uids'][] = (string) $event->UID;
        $result['summaries'][] = (string) $event->SUMMARY;
        $result['urls'][] = isset($event->URL) ? (string) $event->URL : null;
        $result['descriptions'][] = isset($event->DESCRIPTION) ? (string) $event->DESCRIPTION : null;
    }
    foreach ($cal->validate() as $finding) {
        if ($finding['level'] >= 3) {
            $result['errors'][] = $finding['node']->name . ': ' . $finding['message'];
        }
    }
    return $result;
}

$files = array_slice($argv, 1);
if (count($files) === 0) {
    fwrite(STDERR, "usage: php sabre_check.php FILE [FILE...]\n");
    exit(2);
}
$out = [];
foreach ($files as $file) {
    $text = @file_get_contents($file);
    $out[] = $text === false ? ['file' => $file, 'errors' => ["read: cannot read $file"]]
                             : ['file' => $file] + summarise($text);
}
echo json_encode($out, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
