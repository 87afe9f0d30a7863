"""Requests a person writes by hand: the README's curl example as written, and the errors when it is not."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.gateway.helpers import new_key

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_curl() -> tuple[str, str, dict[str, str], str]:
    """The README's job-submitting curl command: (method, url, headers, body)."""
    text = README.read_text(encoding="utf-8")
    command = re.search(r"^curl -s -XPOST .*?(?=\n```)", text, re.S | re.M).group(0)
    args = shlex.split(command.replace("\\\n", " "))
    method, url, headers, body = "GET", "", {}, ""
    i = 1
    while i < len(args):
        arg = args[i]
        if arg.startswith("-X"):
            method = arg[2:]
        elif arg in ("-H", "-d"):
            i += 1
            if arg == "-H":
                name, value = args[i].split(":", 1)
                headers[name.strip()] = value.strip()
            else:
                body = args[i]
        elif not arg.startswith("-"):
            url = arg
        i += 1
    return method, url, headers, body


def test_readme_curl_example_works_as_written(make_client, module_pg_url: str) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    method, url, headers, body = readme_curl()
    assert method == "POST" and headers["Content-Type"] == "application/json"
    headers["Authorization"] = headers["Authorization"].replace("$KEY", auth["Authorization"].split()[1])
    path = url.removeprefix("localhost:8000")
    # no worker runs here: the job stays queued, so do not sit out the example's 30 s wait
    path = path.replace("wait=30", "wait=0")
    r = client.request(method, path, headers=headers, content=body.encode())
    assert r.status_code in (200, 201, 202), r.text
    assert r.json()["status"] == "queued" and r.json()["id"]


def test_a_body_without_the_json_content_type_says_so(make_client, module_pg_url: str) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    _, _, _, body = readme_curl()
    for content_type, said in (
        ("application/x-www-form-urlencoded", "Content-Type: application/x-www-form-urlencoded"),  # curl -d
        ("text/plain", "Content-Type: text/plain"),
        (None, "no Content-Type"),
    ):
        headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
        r = client.post("/v1/jobs", headers=headers, content=body.encode())
        assert r.status_code == 422, r.text
        expected = f"the body must be JSON sent with Content-Type: application/json (this request has {said})"
        assert r.json()["message"] == f"invalid: body: {expected}"
        assert r.json()["detail"] == [{"loc": ["body"], "msg": expected, "type": "content_type"}]


def test_a_json_syntax_error_names_line_and_column(make_client, module_pg_url: str) -> None:
    client = make_client()
    _, auth = new_key(module_pg_url)
    headers = {**auth, "Content-Type": "application/json"}
    broken = '{"prompt": "a red circle",\n  "mode": "fast" "seed": 1}'  # the missing comma: line 2, column 18
    r = client.post("/v1/jobs", headers=headers, content=broken.encode())
    assert r.status_code == 422
    msg = "not valid JSON at line 2, column 18: Expecting ',' delimiter"
    assert r.json() == {
        "detail": [{"loc": ["body"], "msg": msg, "type": "json_invalid"}],
        "message": f"invalid: body: {msg}",
    }
    r = client.post("/v1/jobs", headers=headers, content=b'{"prompt": ')
    assert r.status_code == 422 and "line 1, column 12" in r.json()["message"]
    # a valid body still names the field that is wrong, as before
    r = client.post("/v1/jobs", headers=headers, content=b'{"prompt": "x", "mode": "slow"}')
    assert r.status_code == 422 and r.json()["message"] == "invalid: mode"
