#!/usr/bin/env python3
"""Calls custodia with the official Connect client for Python (PyPI `connectrpc`).

What an integrator (CRM, newsletter sender) does: make sure the purpose
`newsletter` exists with a notice covering it, record a subject's consent,
check it, submit an access request, and watch consent changes as they happen.
Every answer is checked; any failure exits non-zero.

The client code is generated from custodia's protos by the generators of
connectrpc and protobuf-py into the package `gen` beside this file (ignored by
git; see examples/README.md), from the repository root:

    pip install connectrpc protoc-gen-connectrpc protoc-gen-py grpcio-tools
    mkdir -p examples/python/gen
    python -m grpc_tools.protoc -I proto --py_out=examples/python/gen \\
        --connectrpc_out=examples/python/gen $(find proto -name '*.proto')
    CUSTODIA_URL=http://127.0.0.1:50051 CUSTODIA_TOKEN=$(cat data/admin.token) \\
        python examples/python/custodia_calls.py [--codec json|proto] [--protocol connect|grpc-web]
"""

import argparse
import os
import queue
import sys
import threading
import uuid

from connectrpc.code import Code
from connectrpc.codec import proto_binary_codec, proto_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from protobuf import Oneof
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from gen.custodia.common.v1.common_pb import Contact, SubjectRef
from gen.custodia.consent.v1.consent_connect import ConsentServiceClientSync
from gen.custodia.consent.v1.consent_pb import (
    CheckConsentRequest,
    CheckReason,
    ConsentChannel,
    ConsentState,
    CreatePurposeRequest,
    Decision,
    Evidence,
    GetPurposeRequest,
    LawfulBasis,
    ListNoticesRequest,
    Notice,
    PublishNoticeRequest,
    Purpose,
    PurposeCategory,
    PurposeDecision,
    RecordConsentRequest,
    WatchConsentChangesRequest,
)
from gen.custodia.dsar.v1.dsar_connect import DsarServiceClientSync
from gen.custodia.dsar.v1.dsar_pb import (
    Request,
    Requester,
    RequesterRole,
    RequestState,
    RequestType,
    SubmitRequestRequest,
)

PURPOSE = "purposes/newsletter"


def expect(what, ok):
    """Stops the script with a message when an answer is not what it should be."""
    if not ok:
        sys.exit(f"FAIL: {what}")
    print(f"ok: {what}")


def newsletter_notice(consent, auth):
    """The notice version covering `newsletter`, creating purpose and notice on first run."""
    try:
        consent.create_purpose(
            CreatePurposeRequest(
                purpose_id="newsletter",
                purpose=Purpose(
                    display_name="Newsletter",
                    description="The monthly alumni newsletter.",
                    lawful_basis=LawfulBasis.CONSENT,
                    category=PurposeCategory.COMMUNICATION,
                ),
            ),
            headers=auth,
        )
    except ConnectError as e:
        if e.code != Code.ALREADY_EXISTS:  # a second run reuses the purpose
            raise
    # Reads may go as HTTP GET (cacheable, no body); custodia marks them NO_SIDE_EFFECTS.
    purpose = consent.get_purpose(GetPurposeRequest(name=PURPOSE), headers=auth, use_get=True)
    expect("purpose newsletter is consent-based", purpose.purpose.lawful_basis == LawfulBasis.CONSENT)
    latest = consent.list_notices(
        ListNoticesRequest(purpose=PURPOSE, latest_only=True), headers=auth
    ).notices
    if latest:
        return latest[0].name
    published = consent.publish_notice(
        PublishNoticeRequest(
            notice_id="newsletter",
            notice=Notice(
                title="Newsletter",
                language="en",
                content=Oneof("text", "We send you our newsletter once a month."),
                purposes=[PURPOSE],
            ),
        ),
        headers=auth,
    )
    return published.notice.name


def record_consent(consent, auth, email, notice):
    """Records that `email` agreed to the newsletter in a web form, just now."""
    return consent.record_consent(
        RecordConsentRequest(
            subject=SubjectRef(type="email", value=email),
            decisions=[PurposeDecision(purpose=PURPOSE, decision=Decision.GRANTED)],
            evidence=Evidence(
                collect_time=Timestamp.now(),
                channel=ConsentChannel.WEB_FORM,
                notice=notice,
                form_id="newsletter-footer",
            ),
            request_id=str(uuid.uuid4()),  # lets a retry after a timeout record nothing twice
        ),
        headers=auth,
    )


def watch_changes(url, options, auth, changes):
    """Puts every consent change streamed by WatchConsentChanges on `changes`."""
    try:
        with ConsentServiceClientSync(url, **options) as watcher:
            stream = watcher.watch_consent_changes(
                WatchConsentChangesRequest(purposes=[PURPOSE]), headers=auth, timeout_ms=30_000
            )
            for change in stream:
                if change.event:  # not a heartbeat
                    changes.put(change)
    except ConnectError as e:
        changes.put(e)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("CUSTODIA_URL", "http://127.0.0.1:50051"))
    parser.add_argument("--token", default=os.environ.get("CUSTODIA_TOKEN"))
    parser.add_argument("--codec", choices=["json", "proto"], default="json")
    parser.add_argument("--protocol", choices=["connect", "grpc-web"], default="connect")
    args = parser.parse_args()
    if not args.token:
        sys.exit("set CUSTODIA_TOKEN (or --token) to a token with the consent and dsar scopes")

    auth = {"authorization": f"Bearer {args.token}"}
    options = {
        "codec": proto_json_codec() if args.codec == "json" else proto_binary_codec(),
        "protocol": ProtocolType.CONNECT if args.protocol == "connect" else ProtocolType.GRPC_WEB,
        "timeout_ms": 10_000,
    }
    if args.protocol == "grpc-web":
        # connectrpc gzips requests by default: custodia's Connect side inflates
        # them; its gRPC-Web side takes uncompressed messages only.
        options["send_compression"] = None
    print(f"custodia at {args.url}, {args.protocol} protocol, {args.codec} messages")
    email = f"ada.{uuid.uuid4().hex[:8]}@example.edu"  # a new subject each run

    with (
        ConsentServiceClientSync(args.url, **options) as consent,
        DsarServiceClientSync(args.url, **options) as dsar,
    ):
        notice = newsletter_notice(consent, auth)
        expect(f"notice {notice} covers the newsletter", notice.startswith("notices/"))

        recorded = record_consent(consent, auth, email, notice)
        expect(
            "RecordConsent recorded a grant with a signed receipt",
            len(recorded.events) == 1
            and recorded.events[0].state == ConsentState.GRANTED
            and recorded.receipt is not None
            and recorded.receipt.signature != b"",
        )

        check = consent.check_consent(
            CheckConsentRequest(subject=SubjectRef(type="email", value=email), purpose=PURPOSE),
            headers=auth,
        ).result
        expect(
            "CheckConsent says allowed, because of the grant",
            check.allowed and check.reason == CheckReason.GRANTED,
        )

        submitted = dsar.submit_request(
            SubmitRequestRequest(
                request=Request(
                    type=RequestType.ACCESS,
                    subject_identifiers=[SubjectRef(type="email", value=email)],
                    requester=Requester(
                        role=RequesterRole.SUBJECT,
                        contact=Contact(display_name="Ada Lovelace", email=email),
                    ),
                    details="Please send me a copy of my data.",
                ),
                request_id=str(uuid.uuid4()),
            ),
            headers=auth,
        ).request
        expect(
            f"SubmitRequest recorded access request {submitted.name}, due {submitted.due_time.to_datetime():%Y-%m-%d}",
            submitted.name.startswith("requests/")
            and submitted.state == RequestState.RECEIVED
            and submitted.due_time is not None,
        )

        # A change stream sees consents recorded after it opened. The stream runs
        # in a thread; we record until the watcher reports one of our records (the
        # first may land before the server has opened the stream). Changes name
        # the subject's type only: custodia never sends an identifier's value back.
        changes = queue.Queue()
        threading.Thread(
            target=watch_changes, args=(args.url, options, auth, changes), daemon=True
        ).start()
        watched = f"watched.{uuid.uuid4().hex[:8]}@example.edu"
        ours, change = set(), None
        for _ in range(10):
            ours.add(record_consent(consent, auth, watched, notice).events[0].name)
            try:
                change = changes.get(timeout=2)
                break
            except queue.Empty:
                continue
        if isinstance(change, ConnectError):
            raise change
        expect(
            "WatchConsentChanges streamed a consent recorded after it opened",
            change is not None
            and change.event.name in ours
            and change.consent.state == ConsentState.GRANTED
            and change.cursor != "",
        )

    print("all calls answered as expected")


if __name__ == "__main__":
    try:
        main()
    except ConnectError as e:
        # A Connect error has a code, a message and typed details (google.rpc.ErrorInfo...).
        details = ", ".join(d.type_name for d in e.details)
        sys.exit(f"FAIL: {e.code.name}: {e.message} [{details}]")
