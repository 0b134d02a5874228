<?php
// Generates tests/vectors/php_vectors.json with real PHP json_encode (default flags),
// hash_hmac and base64_encode, as the usage.vse documentation's PHP example does.
//
//   php tests/vectors/make_vectors.php > tests/vectors/php_vectors.json
//
// Every "input" is written with JSON_PRESERVE_ZERO_FRACTION so that Python's json.loads gives
// back the same value (floats stay floats); "php" is json_encode($input) with default flags.
// The credentials are fake demo values.

$controls = '';
for ($i = 0; $i < 32; $i++) { $controls .= chr($i); }
$controls .= "\x7f";

$encode_cases = [
    'ascii' => 'Hello, World! ~`@#$%^&*()_+-=[]{}|;:<>?',
    'slash' => 'sestore/demo-origin/clip-001.mp4',
    'e_acute' => 'café',
    'cjk' => '视频/日本語/한국어',
    'emoji' => 'live 😀 🎥 end',
    'astral_max' => "\u{10FFFF}",
    'bmp_edges' => "\u{80}\u{7ff}\u{800}\u{fffd}\u{ffff}\u{2028}\u{2029}\u{feff}",
    'quotes' => 'say "hi" and \'bye\'',
    'backslash' => 'a\\b\\\\c\\u007f\\/',
    'controls' => $controls,
    'empty_string' => '',
    'ints' => [0, 1, -1, 42, 2147483647, -2147483648, PHP_INT_MAX, PHP_INT_MIN],
    'bools_null' => [true, false, null],
    'nested_lists' => [[], [[]], [1, [2, [3, ['a/b']]]], ['x' => [1, 2], 'y' => ['z' => null]]],
    'empty_array' => [],
    'assoc' => ['b' => 1, 'a' => 2, '/' => '/', 'é' => 'é', '' => 'empty key'],
    'floats' => [1.0, 0.1, 2.5, -0.0, 100.0, 1e15, 1e16, 1e17, 1e25, 1e-7, 0.0001, 0.00001,
                 123.456, 5e-324, 1.7976931348623157e308, -1.5e-10, 1.2345678901234568e17],
    'usage_row' => ['video_url' => 'sestore/jb/my_video.mp4', 'bytes_total' => '5106077',
                    'requests_total' => '0'],
];

$secret = '8fc8c48da81e6a2a06a9556379bf798af508dc0792497c678b4c3532ba8b637f';
$api_key = 'DEMOKEY0000000000000000000000000';
$requests = [
    'day' => [
        'command' => 'usage.vse', 'api_key' => $api_key, 'timestamp' => 1737331200,
        'cdn' => 158, 'app' => 'demo-origin', 'year' => 2025, 'month' => 1, 'day' => 20,
        'limit' => 1000, 'offset' => 0,
    ],
    'month' => [
        'command' => 'usage.vse', 'api_key' => $api_key, 'timestamp' => 1737331201,
        'cdn' => 158, 'app' => 'vod-library', 'year' => 2025, 'month' => 1,
        'limit' => 1000, 'offset' => 2000,
    ],
    'urls' => [
        'command' => 'usage.vse', 'api_key' => $api_key, 'timestamp' => 1737331202,
        'cdn' => 158, 'app' => 'live-events',
        'url' => ['sestore/live-events/café-ü.mp4', 'stream/😀-party', 'a"b\\c'],
        'year' => 2025, 'month' => 12, 'day' => 31, 'limit' => 50, 'offset' => 100,
    ],
    'minimal_doc_example' => [
        'command' => 'usage.vse', 'api_key' => 'APX4GKLM0RKQLSP2FBO1ROPKSSW47DZE',
        'timestamp' => 1700000000, 'cdn' => 158, 'app' => 'demo-origin',
        'year' => 2025, 'month' => 1, 'day' => 20,
    ],
    'other_secret' => [
        'command' => 'usage.vse', 'api_key' => $api_key, 'timestamp' => 1,
        'cdn' => 1, 'app' => 'x', 'year' => 2024, 'month' => 2, 'day' => 29,
        'limit' => 1, 'offset' => 0,
    ],
];
$secrets = ['other_secret' => 'ünicode-sêcret/with slash'];

$out = ['php_version' => PHP_VERSION, 'encode' => [], 'requests' => []];
foreach ($encode_cases as $name => $value) {
    $out['encode'][] = [
        'name' => $name,
        'input' => json_encode($value, JSON_PRESERVE_ZERO_FRACTION),
        'php' => json_encode($value),
    ];
}
foreach ($requests as $name => $request) {
    $s = $secrets[$name] ?? $secret;
    $json_request = json_encode($request);
    $sig = base64_encode(hash_hmac('sha256', $json_request, $s, true));
    $request['signature'] = $sig;
    $out['requests'][] = [
        'name' => $name,
        'secret' => $s,
        'input' => json_encode(array_diff_key($request, ['signature' => 1])),
        'php' => $json_request,
        'signature' => $sig,
        'body' => json_encode($request),
    ];
}
echo json_encode($out, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES), "\n";
