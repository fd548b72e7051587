<?php
// A minimal custodia client over the Connect protocol: JSON over HTTP POST with
// PHP's curl functions, no gRPC extension. Copy it into a Moodle plugin (as a
// class under classes/) or any PHP application.

declare(strict_types=1);

/** A Connect error: `code` is a Connect code name such as "invalid_argument". */
final class CustodiaError extends RuntimeException
{
    public function __construct(
        public readonly string $connectCode,
        string $message,
        public readonly int $httpStatus,
        /** @var list<array{type: string, value: string, debug?: array}> */
        public readonly array $details = [],
    ) {
        parent::__construct("$connectCode: $message");
    }

    /** The `debug` form of the first detail of `$type` (e.g. "google.rpc.ErrorInfo"), or null. */
    public function detail(string $type): ?array
    {
        foreach ($this->details as $d) {
            if ($d['type'] === $type) {
                return $d['debug'] ?? null;
            }
        }
        return null;
    }
}

final class CustodiaClient
{
    public function __construct(
        private readonly string $baseUrl,   // e.g. "https://custodia.example.edu"
        private readonly string $token,     // a principal's bearer token
        private readonly int $timeoutSeconds = 10,
    ) {
    }

    /**
     * Calls one RPC, e.g. call('custodia.consent.v1.ConsentService', 'CheckConsent', [...]).
     * The request and the answer are the proto messages in JSON (proto3 JSON mapping).
     *
     * @throws CustodiaError when custodia answers with an error, or it cannot be reached.
     */
    public function call(string $service, string $method, array $request): array
    {
        $curl = curl_init(rtrim($this->baseUrl, '/') . "/$service/$method");
        curl_setopt_array($curl, [
            CURLOPT_POST => true,
            CURLOPT_POSTFIELDS => json_encode((object) $request, JSON_THROW_ON_ERROR),
            CURLOPT_HTTPHEADER => [
                'Content-Type: application/json',
                'Authorization: Bearer ' . $this->token,
            ],
            CURLOPT_RETURNTRANSFER => true,
            CURLOPT_TIMEOUT => $this->timeoutSeconds,
        ]);
        $body = curl_exec($curl);
        $status = curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
        $failure = curl_error($curl);
        curl_close($curl);

        if ($body === false) {
            throw new CustodiaError('unavailable', "custodia not reached: $failure", 0);
        }
        $answer = json_decode($body, true);
        if ($status === 200 && is_array($answer)) {
            return $answer;
        }
        // Any other status carries a Connect error: {"code", "message", "details"}.
        throw new CustodiaError(
            $answer['code'] ?? 'unknown',
            $answer['message'] ?? "HTTP $status",
            $status,
            $answer['details'] ?? [],
        );
    }
}
