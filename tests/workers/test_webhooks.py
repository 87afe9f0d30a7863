"""Webhooks that cannot be turned inward (SSRF), signed as Standard Webhooks say, verified by the stock
`standardwebhooks` package. A receiver on 127.0.0.1 proves that no spelling of a local target reaches it."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook, WebhookVerificationError

from audit import jobs as repo
from audit.db import session_scope
from audit.models import WebhookDelivery
from settings import Settings
from tests.gateway.helpers import make_settings, new_key
from tests.workers.receiver import Receiver
from workers import url_guard, webhooks

LOCAL_HOSTS = [
    "127.0.0.1",
    "127.1",  # short
    "2130706433",  # decimal
    "0x7f000001",  # hex
    "0x7f.0.0.1",
    "0177.0.0.1",  # octal
    "127.0.0.1.",  # trailing dot
    "127.255.255.254",
    "[::1]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[64:ff9b::7f00:1]",  # NAT64
    "[2002:7f00:1::]",  # 6to4
    "0.0.0.0",
    "0",
    "[::]",
    "localhost",
    "LOCALHOST.",
    "api.localhost",
    "169.254.169.254",  # cloud metadata
    "[fe80::1%25eth0]",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.0.1",
    "100.64.0.1",  # shared address space
    "[fc00::1]",
    "[fd00:ec2::254]",
    "224.0.0.1",
    "[ff02::1]",
    "255.255.255.255",
    "240.0.0.1",
]
PUBLIC_HOSTS = ["93.184.215.14", "8.8.8.8", "[2606:4700:4700::1111]", "example.com", "hooks.example.org."]


@pytest.mark.parametrize("host", LOCAL_HOSTS)
def test_every_spelling_of_a_local_target_is_refused_without_dns(host: str) -> None:
    problem = url_guard.submission_problem(f"http://{host}:8080/hook", url_guard.parse_allow(""))
    assert problem is not None and url_guard.ALLOW_SETTING in problem


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_public_targets_pass_the_submission_check(host: str) -> None:
    assert url_guard.submission_problem(f"https://{host}/hook", url_guard.parse_allow("")) is None


def test_the_allow_setting_takes_ranges_and_names() -> None:
    allow = url_guard.parse_allow("127.0.0.1/32, Dev-Receiver.Local., 10.0.0.0/8, ::1")
    assert allow.hosts == {"dev-receiver.local"}
    for host in ("127.0.0.1", "[::ffff:127.0.0.1]", "10.9.8.7", "[::1]", "dev-receiver.local"):
        assert url_guard.host_problem(host, allow) is None, host
    for host in ("127.0.0.2", "192.168.0.1", "localhost"):
        assert url_guard.host_problem(host, allow) is not None, host
    assert Settings(webhook_allow="127.0.0.1/32,localhost").webhook_allow
    with pytest.raises(ValueError, match="EMOE_WEBHOOK_ALLOW"):
        Settings(webhook_allow="127.0.0.1/32,http://x")


# --- at submission: a 422 naming the field ------------------------------------------------------------------


@pytest.fixture
def api(migrated_sqlite_url: str, tmp_path) -> Iterator[Any]:
    """(client factory, auth) over an app whose jobs stay queued."""
    from gateway.app import create_app

    opened: list[TestClient] = []
    _, auth = new_key(migrated_sqlite_url)

    def build(**changes: Any) -> TestClient:
        settings = make_settings(migrated_sqlite_url, tmp_path, **changes)
        client = TestClient(create_app(settings, start_workers=False), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return client

    yield build, auth
    for client in opened:
        client.__exit__(None, None, None)


@pytest.mark.parametrize(
    "url",
    [f"http://{h}:9/hook" for h in ("127.1", "2130706433", "[::ffff:127.0.0.1]", "0.0.0.0", "localhost.")]
    + ["http://example.com@127.0.0.1/hook", "http://127.0.0.1\\@example.com/", "http://example.com:99999/"],
)
def test_submission_refuses_local_targets_with_a_422_naming_the_field(api, url: str) -> None:
    build, auth = api
    response = build().post("/v1/jobs", json={"prompt": "a red circle", "callback_url": url}, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "callback_url"]


def test_submission_takes_allowed_and_public_targets(api) -> None:
    build, auth = api
    client = build(webhook_allow="127.0.0.1/32")
    for url in ("http://127.0.0.1:9/hook", "https://hooks.example.com/x"):  # names are checked at delivery
        response = client.post("/v1/jobs", json={"prompt": "a red circle", "callback_url": url}, headers=auth)
        assert response.status_code == 202, response.text


# --- at delivery: resolve once, refuse, connect to the checked address, follow no redirects -----------------


def _job(url: str, callback_url: str, tenant: str = "t") -> uuid.UUID:
    with session_scope(url) as session:
        job, _ = repo.create_job(
            session,
            tenant=tenant,
            prompt="a red circle",
            negative_prompt="",
            mode="fast",
            params={"seed": 0, "steps": 2, "guidance": 7.5, "height": None, "width": None},
            labels={},
            language="en",
            callback_url=callback_url,
        )
        return job.id


def _deliveries(url: str, job_id: uuid.UUID) -> list[WebhookDelivery]:
    with session_scope(url) as session:
        rows = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.id)
        ).all()
        session.expunge_all()
        return list(rows)


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names under `.test` resolve to the addresses in the returned dict (each lookup is counted in
    `lookups`); every other name goes to the real resolver."""
    real = socket.getaddrinfo
    table: dict[str, list[str]] = {}
    lookups: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.rstrip(".") in table:
            lookups.append(name)
            infos = []
            for address in table[name.rstrip(".")]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (address, int(port), 0, 0) if family == socket.AF_INET6 else (address, int(port))
                infos.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
            return infos
        if name.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    table["lookups"] = lookups  # type: ignore[assignment]
    return table


def test_no_spelling_of_a_local_target_reaches_the_receiver(migrated_sqlite_url, tmp_path, fake_dns) -> None:
    fake_dns["rebind.test"] = ["127.0.0.1"]
    fake_dns["mixed.test"] = ["93.184.215.14", "127.0.0.1"]  # refused when any address is local
    fake_dns["mapped.test"] = ["::ffff:127.0.0.1"]
    settings = make_settings(migrated_sqlite_url, tmp_path, webhook_max_attempts=3)
    errors: dict[str, str] = {}
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        urls = [f"http://{h}:{port}/hook" for h in LOCAL_HOSTS] + [
            f"http://{name}:{port}/hook"
            for name in ("rebind.test", "mixed.test", "mapped.test", "rebind.test.")
        ]
        urls += [f"http://nowhere.test@127.0.0.1:{port}/hook", f"https://[::1]:{port}/hook"]
        for callback in urls:
            job_id = _job(migrated_sqlite_url, callback)
            assert webhooks.deliver(job_id, "completed", 1, settings) is not None, callback  # retried...
            assert webhooks.deliver(job_id, "completed", 3, settings) is None  # ...until the last attempt
            rows = _deliveries(migrated_sqlite_url, job_id)
            assert [(r.attempt, r.delivered, r.status_code) for r in rows] == [
                (1, False, None),
                (3, False, None),
            ]
            assert rows[0].url == callback
            errors[callback] = rows[0].error or ""
        assert receiver.requests == []
        # the same receiver, once allowed, is reached: the refusals above are the guard's, not a dead port
        allowed = make_settings(migrated_sqlite_url, tmp_path, webhook_allow="127.0.0.1/32")
        assert (
            webhooks.deliver(
                _job(migrated_sqlite_url, f"http://rebind.test:{port}/h"), "completed", 1, allowed
            )
            is None
        )
        assert len(receiver.requests) == 1
    octal = f"http://0177.0.0.1:{port}/hook"  # httpx itself refuses this spelling as an invalid URL
    assert errors.pop(octal).startswith("InvalidURL")
    assert all(e.startswith("refused: ") and "EMOE_WEBHOOK_ALLOW" in e for e in errors.values()), errors


def test_delivery_connects_to_the_checked_address_with_the_host_kept(
    migrated_sqlite_url, tmp_path, fake_dns
) -> None:
    fake_dns["hooks.test"] = ["127.0.0.1"]
    settings = make_settings(migrated_sqlite_url, tmp_path, webhook_allow="127.0.0.1/32")
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        job_id = _job(migrated_sqlite_url, f"http://hooks.test:{port}/hook")
        assert webhooks.deliver(job_id, "completed", 1, settings) is None
    assert fake_dns["lookups"] == ["hooks.test"]  # type: ignore[comparison-overlap]  # one lookup, no second
    headers, _ = receiver.requests[0]
    assert headers["Host"] == f"hooks.test:{port}"
    assert _deliveries(migrated_sqlite_url, job_id)[0].delivered


def test_an_allowed_name_may_resolve_to_a_local_address(migrated_sqlite_url, tmp_path, fake_dns) -> None:
    fake_dns["dev.test"] = ["127.0.0.1"]
    settings = make_settings(migrated_sqlite_url, tmp_path, webhook_allow="dev.test")
    with Receiver() as receiver:
        port = receiver.server.server_address[1]
        assert (
            webhooks.deliver(_job(migrated_sqlite_url, f"http://dev.test:{port}/h"), "failed", 1, settings)
            is None
        )
        other = _job(migrated_sqlite_url, f"http://127.0.0.1:{port}/h")  # the address itself is not allowed
        assert webhooks.deliver(other, "failed", 1, settings) is not None
    assert len(receiver.requests) == 1


def test_redirects_are_not_followed_and_proxies_from_the_environment_are_not_used(
    migrated_sqlite_url, tmp_path, monkeypatch
) -> None:
    settings = make_settings(migrated_sqlite_url, tmp_path, webhook_allow="127.0.0.1/32")
    with Receiver() as inner, Receiver() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.rsplit("/", 1)[0])
        monkeypatch.setenv("http_proxy", proxy.url.rsplit("/", 1)[0])
        with Receiver(statuses=[302], location=inner.url) as outer:
            job_id = _job(migrated_sqlite_url, outer.url)
            assert webhooks.deliver(job_id, "halted", 1, settings) is not None
        assert len(outer.requests) == 1 and inner.requests == [] and proxy.requests == []
    row = _deliveries(migrated_sqlite_url, job_id)[0]
    assert (row.status_code, row.delivered, row.error) == (302, False, "receiver answered 302")


# --- Standard Webhooks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret", ["whsec_" + base64.b64encode(b"k" * 32).decode(), "test-webhook-secret"], ids=["whsec", "plain"]
)
def test_deliveries_verify_with_the_standardwebhooks_package(migrated_sqlite_url, tmp_path, secret) -> None:
    settings = make_settings(
        migrated_sqlite_url,
        tmp_path,
        webhook_allow="127.0.0.1/32",
        webhook_secret=secret,
        webhook_backoff_s=0,
    )
    with Receiver(statuses=[500]) as receiver:
        job_id = _job(migrated_sqlite_url, receiver.url)
        assert webhooks.deliver(job_id, "flagged", 1, settings) is not None
        assert webhooks.deliver(job_id, "flagged", 2, settings) is None
    tenant_secret = webhooks.tenant_secret(secret, "t")  # the job's tenant's own secret
    verifier = Webhook(tenant_secret)
    ids = set()
    for headers, body in receiver.requests:
        assert verifier.verify(body, headers)["event"] == "flagged"
        assert headers["webhook-signature"].startswith("v1,")
        ids.add(headers["webhook-id"])
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body + b" ", headers)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + base64.b64encode(b"another secret of 24 bytes").decode()).verify(body, headers)
        with pytest.raises(WebhookVerificationError):  # neither the operator's secret nor another tenant's
            Webhook(webhooks.receiver_secret(secret)).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(webhooks.tenant_secret(secret, "t2")).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            verifier.verify(body, {**headers, "webhook-id": f"{uuid.uuid4()}:flagged"})
        # the deprecated header still verifies for receivers not yet moved
        assert webhooks.verify_signature(tenant_secret, body, headers[webhooks.SIGNATURE_HEADER])
    assert ids == {f"{job_id}:flagged"}  # the same id on every attempt: receivers deduplicate on it
    assert json.loads(receiver.requests[0][1])["delivery_id"] == f"{job_id}:flagged"


def test_the_generated_secret_is_a_whsec_secret(tmp_path) -> None:
    settings = Settings(home=tmp_path, webhook_secret=None)
    secret = webhooks.webhook_secret(settings)
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    assert webhooks.webhook_secret(settings) == secret  # kept
    assert webhooks.receiver_secret(secret) == secret
    body = b'{"event": "completed"}'
    headers = webhooks.sign_standard(secret, "msg_1", body)
    assert Webhook(secret).verify(body, headers) == {"event": "completed"}
    with pytest.raises(ValueError, match="base64"):
        webhooks.signing_key("whsec_not base64!")
    for bad in ("whsec_not base64!", "whsec_"):
        with pytest.raises(ValueError, match="EMOE_WEBHOOK_SECRET"):
            Settings(webhook_secret=bad)  # refused when the service starts, not at the first delivery


def test_tls_checks_the_certificate_and_sends_sni_for_the_name_not_the_address(
    migrated_sqlite_url, tmp_path, fake_dns, monkeypatch
) -> None:
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=hooks.test",
            ),
            *("-addext", "subjectAltName=DNS:hooks.test", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the receiver's certificate is the only trusted one
    fake_dns["hooks.test"] = ["127.0.0.1"]
    fake_dns["other.test"] = ["127.0.0.1"]
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    settings = make_settings(migrated_sqlite_url, tmp_path, webhook_allow="127.0.0.1/32")
    with Receiver() as receiver:
        receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
        port = receiver.server.server_address[1]
        good = _job(migrated_sqlite_url, f"https://hooks.test:{port}/hook")
        assert webhooks.deliver(good, "completed", 1, settings) is None
        wrong_name = _job(migrated_sqlite_url, f"https://other.test:{port}/hook")  # same address, other name
        assert webhooks.deliver(wrong_name, "completed", 1, settings) is not None
    assert server_names == ["hooks.test", "other.test"]
    assert len(receiver.requests) == 1 and receiver.requests[0][0]["Host"] == f"hooks.test:{port}"
    assert "certificate" in (_deliveries(migrated_sqlite_url, wrong_name)[0].error or "").lower()


def test_retries_back_off_exponentially_with_jitter(tmp_path) -> None:
    settings = Settings(home=tmp_path, webhook_backoff_s=2.0)
    for attempt in (1, 2, 3):
        delays = {webhooks.backoff_s(attempt, settings) for _ in range(50)}
        assert all(2.0 * 2 ** (attempt - 1) * 0.5 <= d <= 2.0 * 2 ** (attempt - 1) for d in delays)
        assert len(delays) > 40  # spread, not one value for every delivery


def test_while_rotating_webhooks_carry_both_tenant_signatures(migrated_sqlite_url, tmp_path) -> None:
    old, new = (f"whsec_{base64.b64encode(bytes([i]) * 32).decode()}" for i in (1, 2))
    settings = make_settings(
        migrated_sqlite_url,
        tmp_path,
        webhook_allow="127.0.0.1/32",
        webhook_secret=new,
        webhook_secret_previous=old,
    )
    with Receiver() as receiver:
        job_id = _job(migrated_sqlite_url, receiver.url)
        assert webhooks.deliver(job_id, "completed", 1, settings) is None
    [(headers, body)] = receiver.requests
    assert len(headers["webhook-signature"].split(" ")) == 2
    for operator_secret in (old, new):  # a receiver on either secret verifies during the overlap
        assert (
            Webhook(webhooks.tenant_secret(operator_secret, "t")).verify(body, headers)["event"]
            == "completed"
        )
    assert webhooks.tenant_secret(new, "t") != webhooks.tenant_secret(new, "t2") != new


def test_the_webhooks_secret_command_prints_the_tenants_secret(monkeypatch) -> None:
    from typer.testing import CliRunner

    from cli.main import app
    from settings import get_settings

    monkeypatch.setenv("EMOE_WEBHOOK_SECRET", "an operator secret for the test")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["webhooks", "secret", "--tenant", "acme"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == webhooks.tenant_secret(
        "an operator secret for the test", "acme"
    )


def test_a_slow_receiver_holds_at_most_its_hosts_slots(migrated_sqlite_url, tmp_path, fake_dns) -> None:
    """Three consumer threads, one slot per host: deliveries to a slow host beyond its slot are put back at
    once (not attempted, not counted), so a delivery to another host goes out while the slow one hangs."""
    from concurrent.futures import ThreadPoolExecutor

    fake_dns["slow.test"] = ["127.0.0.1"]
    fake_dns["fast.test"] = ["127.0.0.1"]
    settings = make_settings(
        migrated_sqlite_url, tmp_path, webhook_allow="127.0.0.1/32", webhook_per_host=1, webhook_timeout_s=10
    )
    with Receiver(delay_s=2.0) as slow, Receiver() as fast:
        slow_jobs = [_job(migrated_sqlite_url, slow.url.replace("127.0.0.1", "slow.test")) for _ in range(3)]
        fast_job = _job(migrated_sqlite_url, fast.url.replace("127.0.0.1", "fast.test"))
        with ThreadPoolExecutor(3) as consumer:  # as the hooks consumer's EMOE_WEBHOOK_CONCURRENCY threads
            first = consumer.submit(webhooks.deliver, slow_jobs[0], "completed", 1, settings)
            while not slow.requests:  # the first slow delivery holds the host's slot
                time.sleep(0.01)
            put_back = [consumer.submit(webhooks.deliver, j, "completed", 1, settings) for j in slow_jobs[1:]]
            busy = [f.result(timeout=1) for f in put_back]
            other = consumer.submit(webhooks.deliver, fast_job, "completed", 1, settings)
            assert other.result(timeout=1) is None  # delivered...
            assert slow.answered == 0  # ...while the slow receiver still holds its request
            assert first.result(timeout=10) is None
    assert all(isinstance(b, webhooks.HostBusy) and 0 < b < 1 for b in busy)
    assert [webhooks.next_attempt(1, b) for b in busy] == [1, 1]  # a busy host is not an attempt
    assert webhooks.next_attempt(1, 2.0) == 2
    assert len(slow.requests) == 1 and len(fast.requests) == 1
    assert [_deliveries(migrated_sqlite_url, j) for j in slow_jobs[1:]] == [[], []]  # nothing recorded
    assert [r.delivered for r in _deliveries(migrated_sqlite_url, slow_jobs[0])] == [True]


def test_one_tenants_slow_receivers_on_many_hosts_leave_threads_to_the_others(
    migrated_sqlite_url, tmp_path, fake_dns
) -> None:
    """Three consumer threads, two slots per tenant: tenant a's third delivery (to a third host, whose own
    slot is free) is put back, so tenant b's delivery goes out while a's two slow receivers hang."""
    from concurrent.futures import ThreadPoolExecutor

    for name in ("slow1.test", "slow2.test", "slow3.test", "b.test"):
        fake_dns[name] = ["127.0.0.1"]
    settings = make_settings(
        migrated_sqlite_url,
        tmp_path,
        webhook_allow="127.0.0.1/32",
        webhook_per_host=2,
        webhook_per_tenant=2,
        webhook_timeout_s=10,
    )
    with Receiver(delay_s=2.0) as slow, Receiver() as fast:
        a_jobs = [
            _job(migrated_sqlite_url, slow.url.replace("127.0.0.1", f"slow{i}.test"), tenant="a")
            for i in (1, 2, 3)
        ]
        b_job = _job(migrated_sqlite_url, fast.url.replace("127.0.0.1", "b.test"), tenant="b")
        with ThreadPoolExecutor(3) as consumer:
            held = [consumer.submit(webhooks.deliver, j, "completed", 1, settings) for j in a_jobs[:2]]
            while len(slow.requests) < 2:  # a's two deliveries hold the tenant's two slots
                time.sleep(0.01)
            busy = consumer.submit(webhooks.deliver, a_jobs[2], "completed", 1, settings).result(timeout=1)
            other = consumer.submit(webhooks.deliver, b_job, "completed", 1, settings)
            assert other.result(timeout=1) is None  # b's delivered...
            assert slow.answered == 0  # ...while a's receivers still hold their requests
            assert [f.result(timeout=10) for f in held] == [None, None]
    assert isinstance(busy, webhooks.HostBusy) and webhooks.next_attempt(1, busy) == 1
    assert len(slow.requests) == 2 and len(fast.requests) == 1
    assert _deliveries(migrated_sqlite_url, a_jobs[2]) == []  # put back, not an attempt
    assert Settings().webhook_per_tenant < Settings().webhook_concurrency  # the default leaves threads over


# --- per-tenant rotation ------------------------------------------------------------------------------------


def test_generation_0_is_the_secret_from_before_rotation_existed() -> None:
    import hashlib
    import hmac

    operator = "whsec_" + base64.b64encode(b"o" * 32).decode()
    before = hmac.new(b"o" * 32, b"emoe-gate webhook secret of tenant v1\x00acme", hashlib.sha256).digest()
    assert webhooks.tenant_secret(operator, "acme", 0) == "whsec_" + base64.b64encode(before).decode()
    derived = {webhooks.tenant_secret(operator, t, g) for t in ("acme", "acme1", "1") for g in (0, 1, 2, 11)}
    assert len(derived) == 12  # no (tenant, generation) shares another's secret


def _delivered(url: str, settings: Settings, tenant: str) -> tuple[dict[str, str], bytes]:
    """The one request a fresh receiver got for a job of `tenant`."""
    with Receiver() as receiver:
        assert webhooks.deliver(_job(url, receiver.url, tenant), "completed", 1, settings) is None
    [request] = receiver.requests
    return request


def test_rotating_a_tenant_signs_with_both_secrets_until_the_overlap_ends(
    migrated_sqlite_url, tmp_path
) -> None:
    from datetime import UTC, datetime, timedelta

    from audit.webhook_secrets import rotate

    settings = make_settings(migrated_sqlite_url, tmp_path, webhook_allow="127.0.0.1/32")
    operator = settings.webhook_secret or ""
    old, new = (Webhook(webhooks.tenant_secret(operator, "t", g)) for g in (0, 1))
    headers, body = _delivered(migrated_sqlite_url, settings, "t")
    assert old.verify(body, headers) and " " not in headers["webhook-signature"]

    with session_scope(migrated_sqlite_url) as session:
        assert rotate(session, "t", timedelta(hours=24)).current == 1
    headers, body = _delivered(migrated_sqlite_url, settings, "t")
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert old.verify(body, headers)["event"] == "completed"  # a receiver not yet moved still verifies
    assert new.verify(body, headers)["event"] == "completed"
    headers, body = _delivered(migrated_sqlite_url, settings, "t2")  # another tenant is untouched
    assert Webhook(webhooks.tenant_secret(operator, "t2", 0)).verify(body, headers)
    assert " " not in headers["webhook-signature"]

    with session_scope(migrated_sqlite_url) as session:  # an overlap that ended a minute ago
        rotate(session, "t", timedelta(hours=1), now=datetime.now(UTC) - timedelta(minutes=61))
    headers, body = _delivered(migrated_sqlite_url, settings, "t")
    assert " " not in headers["webhook-signature"]
    assert Webhook(webhooks.tenant_secret(operator, "t", 2)).verify(body, headers)
    for stale in (old, new):
        with pytest.raises(WebhookVerificationError):
            stale.verify(body, headers)


def _cli(*args: str, secret: str = "an operator secret for the test") -> Any:
    from typer.testing import CliRunner

    from cli.main import app
    from settings import get_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMOE_WEBHOOK_SECRET", secret)
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(app, list(args))
        finally:
            get_settings.cache_clear()


def test_the_rotate_command_prints_the_new_secret_and_until_when_the_old_one_signs(
    migrated_sqlite_url, tmp_path
) -> None:
    from datetime import UTC, datetime, timedelta

    operator = "an operator secret for the test"
    result = _cli("webhooks", "rotate", "--tenant", "acme", "--overlap", "2h", "--db", migrated_sqlite_url)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == webhooks.tenant_secret(operator, "acme", 1)
    until = datetime.strptime(lines[0].split("until ")[1].split(";")[0], "%Y-%m-%d %H:%M:%S UTC")
    assert abs(until.replace(tzinfo=UTC) - datetime.now(UTC) - timedelta(hours=2)) < timedelta(minutes=1)

    shown = _cli("webhooks", "secret", "--tenant", "acme", "--db", migrated_sqlite_url)
    assert shown.exit_code == 0, shown.output
    assert shown.output.strip().splitlines()[-1] == lines[-1]
    assert webhooks.tenant_secret(operator, "acme", 0) in shown.output  # still signing: shown with its end

    again = _cli("webhooks", "rotate", "--tenant", "acme", "--overlap", "0", "--db", migrated_sqlite_url)
    assert again.exit_code == 0 and "no longer signs" in again.output
    assert again.output.strip().splitlines()[-1] == webhooks.tenant_secret(operator, "acme", 2)
    settings = make_settings(
        migrated_sqlite_url, tmp_path, webhook_allow="127.0.0.1/32", webhook_secret=operator
    )
    headers, body = _delivered(migrated_sqlite_url, settings, "acme")
    assert Webhook(again.output.strip().splitlines()[-1]).verify(body, headers)
    assert " " not in headers["webhook-signature"]

    for bad, field in ((["--overlap", "soon"], "--overlap"), (["--overlap", "31d"], "--overlap")):
        refused = _cli("webhooks", "rotate", "--tenant", "acme", *bad, "--db", migrated_sqlite_url)
        assert refused.exit_code == 2 and field in refused.output, refused.output
    refused = _cli("webhooks", "rotate", "--tenant", "no spaces", "--db", migrated_sqlite_url)
    assert refused.exit_code == 2 and "--tenant" in refused.output, refused.output


def test_the_first_key_of_a_tenant_shows_its_webhook_secret(migrated_sqlite_url, tmp_path) -> None:
    operator = "an operator secret for the test"
    first = _cli("keys", "create", "--tenant", "acme", "--db", migrated_sqlite_url)
    assert first.exit_code == 0, first.output
    lines = first.output.strip().splitlines()
    assert lines[-1].startswith("emg_")  # the key stays on the last line
    [shown] = [line for line in lines if line.startswith("whsec_")]
    assert "Standard Webhooks" in first.output
    settings = make_settings(
        migrated_sqlite_url, tmp_path, webhook_allow="127.0.0.1/32", webhook_secret=operator
    )
    headers, body = _delivered(migrated_sqlite_url, settings, "acme")
    assert Webhook(shown).verify(body, headers)["event"] == "completed"  # what it prints verifies

    second = _cli("keys", "create", "--tenant", "acme", "--role", "read", "--db", migrated_sqlite_url)
    assert second.exit_code == 0 and "whsec_" not in second.output

    # a tenant rotated before its first key gets the current generation's secret
    assert (
        _cli(
            "webhooks", "rotate", "--tenant", "globex", "--overlap", "0", "--db", migrated_sqlite_url
        ).exit_code
        == 0
    )
    made = _cli("keys", "create", "--tenant", "globex", "--db", migrated_sqlite_url)
    assert webhooks.tenant_secret(operator, "globex", 1) in made.output


def test_rotating_the_operator_secret_signs_no_one_out_of_the_dashboard(tmp_path) -> None:
    from audit.models import ApiKey
    from gateway.auth import SessionSigner

    old, new = (f"whsec_{base64.b64encode(bytes([i]) * 32).decode()}" for i in (3, 4))
    key = ApiKey(id=7, tenant="acme", role="read", key_prefix="emg_abcdefgh")
    cookie, _ = SessionSigner.for_settings(Settings(home=tmp_path, webhook_secret=old)).issue(key, 3600)
    rotating = SessionSigner.for_settings(
        Settings(home=tmp_path, webhook_secret=new, webhook_secret_previous=old)
    )
    signed = rotating.read(cookie)
    assert signed is not None and (signed.tenant, signed.key_id) == ("acme", 7)
    fresh, _ = rotating.issue(key, 3600)  # new sessions are signed under the new secret only
    assert SessionSigner.for_settings(Settings(home=tmp_path, webhook_secret=old)).read(fresh) is None
    done = SessionSigner.for_settings(Settings(home=tmp_path, webhook_secret=new))
    assert done.read(fresh) is not None
    assert done.read(cookie) is None  # the previous secret unset: its sessions end
    assert rotating.read(cookie[:-2] + "AA") is None
