<?php
// What a Moodle plugin does with custodia: record that a user agreed to the
// newsletter, check it before sending, and pass on a "send me my data" request.
//
//   CUSTODIA_URL=http://127.0.0.1:50051 CUSTODIA_TOKEN=... php examples/php/example.php
//
// Needs php-cli and php-curl only. Exits non-zero when an answer is not as expected.

declare(strict_types=1);

require __DIR__ . '/CustodiaClient.php';

const CONSENT = 'custodia.consent.v1.ConsentService';
const DSAR = 'custodia.dsar.v1.DsarService';
const PURPOSE = 'purposes/newsletter';

function expect(string $what, bool $ok): void
{
    if (!$ok) {
        fwrite(STDERR, "FAIL: $what\n");
        exit(1);
    }
    echo "ok: $what\n";
}

$token = getenv('CUSTODIA_TOKEN');
if (!$token) {
    fwrite(STDERR, "set CUSTODIA_TOKEN to a token with the consent and dsar scopes\n");
    exit(2);
}
$custodia = new CustodiaClient(getenv('CUSTODIA_URL') ?: 'http://127.0.0.1:50051', $token);
$email = 'grace.' . bin2hex(random_bytes(4)) . '@example.edu';

try {
    // The purpose and the notice shown to users are set up once by the DPO;
    // create them if this is a new installation. ALREADY_EXISTS is no failure.
    try {
        $custodia->call(CONSENT, 'CreatePurpose', [
            'purposeId' => 'newsletter',
            'purpose' => [
                'displayName' => 'Newsletter',
                'lawfulBasis' => 'LAWFUL_BASIS_CONSENT',
                'category' => 'PURPOSE_CATEGORY_COMMUNICATION',
            ],
        ]);
    } catch (CustodiaError $e) {
        if ($e->connectCode !== 'already_exists') {
            throw $e;
        }
    }
    // The latest notice covering the purpose is what users are shown; its version
    // name goes with each consent as evidence.
    $latest = $custodia->call(CONSENT, 'ListNotices', ['purpose' => PURPOSE, 'latestOnly' => true]);
    $notice = $latest['notices'][0]['name'] ?? $custodia->call(CONSENT, 'PublishNotice', [
        'noticeId' => 'newsletter',
        'notice' => [
            'title' => 'Newsletter',
            'text' => 'We send you our newsletter once a month.',
            'purposes' => [PURPOSE],
        ],
    ])['notice']['name'];

    // 1. Record the consent, with the evidence of how and when it was given.
    $recorded = $custodia->call(CONSENT, 'RecordConsent', [
        'subject' => ['type' => 'email', 'value' => $email],
        'decisions' => [['purpose' => PURPOSE, 'decision' => 'DECISION_GRANTED']],
        'evidence' => [
            'collectTime' => gmdate('Y-m-d\TH:i:s\Z'),
            'channel' => 'CONSENT_CHANNEL_WEB_FORM',
            'notice' => $notice,
            'formId' => 'moodle-profile',
        ],
        'requestId' => bin2hex(random_bytes(16)), // a retry with the same id records nothing twice
    ]);
    expect('RecordConsent recorded a grant', $recorded['events'][0]['state'] === 'CONSENT_STATE_GRANTED');

    // 2. Check it before processing. Enums arrive as their names.
    $check = $custodia->call(CONSENT, 'CheckConsent', [
        'subject' => ['type' => 'email', 'value' => $email],
        'purpose' => PURPOSE,
    ])['result'];
    expect('CheckConsent says allowed', ($check['allowed'] ?? false) === true
        && $check['reason'] === 'CHECK_REASON_GRANTED');

    // 3. Submit the user's request for a copy of their data (Art. 15).
    $request = $custodia->call(DSAR, 'SubmitRequest', [
        'request' => [
            'type' => 'REQUEST_TYPE_ACCESS',
            'subjectIdentifiers' => [['type' => 'email', 'value' => $email]],
            'requester' => [
                'role' => 'REQUESTER_ROLE_SUBJECT',
                'contact' => ['displayName' => 'Grace Hopper', 'email' => $email],
            ],
            'channel' => 'REQUEST_CHANNEL_WEB_FORM',
        ],
    ])['request'];
    expect("SubmitRequest recorded {$request['name']}, due {$request['dueTime']}",
        $request['state'] === 'REQUEST_STATE_RECEIVED');
} catch (CustodiaError $e) {
    fwrite(STDERR, "FAIL: {$e->getMessage()}\n");
    exit(1);
}

// 4. Reading an error: a consent collected in the future is refused. The error
// names the field; `debug` is the detail in JSON, `value` the same in base64 protobuf.
try {
    $custodia->call(CONSENT, 'RecordConsent', [
        'subject' => ['type' => 'email', 'value' => $email],
        'decisions' => [['purpose' => PURPOSE, 'decision' => 'DECISION_GRANTED']],
        'evidence' => [
            'collectTime' => gmdate('Y-m-d\TH:i:s\Z', time() + 86400),
            'channel' => 'CONSENT_CHANNEL_WEB_FORM',
            'notice' => $notice,
        ],
    ]);
    expect('a consent collected tomorrow is refused', false);
} catch (CustodiaError $e) {
    $info = $e->detail('google.rpc.ErrorInfo');        // why, as a stable reason code
    $bad = $e->detail('google.rpc.BadRequest');        // which fields, and what is wrong
    $field = $bad['fieldViolations'][0]['field'] ?? '';
    echo "custodia said: HTTP {$e->httpStatus} {$e->getMessage()}\n";
    echo "  reason {$info['reason']}, field $field\n";
    expect('the refusal is invalid_argument naming evidence.collect_time',
        $e->httpStatus === 400 && $e->connectCode === 'invalid_argument'
        && str_contains($field, 'collect_time'));
}

echo "all calls answered as expected\n";
