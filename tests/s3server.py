"""A real S3 HTTP endpoint on 127.0.0.1 for the mirror's S3 tests: moto's server mode (what s3fs's own
test suite runs against), started and stopped by the fixtures here.

``S3Server`` binds a free port, starts within a bounded time (moto's own ``start()`` waits without a
bound, so it runs in a helper thread that is joined with a timeout), can stop and start again on the
same port (the buckets live in moto's in-process backends, so they survive, as a real store's would),
and can be made to check credentials (``require_credentials``: moto's ``/moto-api/reset-auth``; by
default moto accepts any key).

Fixtures (registered by tests/conftest.py):

- ``s3_server``: one server for the session, started by the first test that asks for it.
- ``s3``: that server, with the test's environment pointed at it (``AWS_ENDPOINT_URL``, dummy
  credentials, no AWS config files, few retries) and a fresh bucket: ``s3.bucket``, ``s3.url(...)``.
- ``s3_target``: an ``FsspecTarget`` at ``s3://<fresh bucket>/target``.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import pytest

from tests.servers import free_port

START_TIMEOUT = 10.0  # seconds for the server to listen
DUMMY_KEY, DUMMY_SECRET = "AKIDCKPTWATCHTEST", "ckptwatch-test-secret"


class S3Server:
    """moto's ThreadedMotoServer on 127.0.0.1:``port``; ``endpoint`` is its URL."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    def start(self) -> Self:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        starter = threading.Thread(target=server.start, name=f"moto-start-{self.port}", daemon=True)
        starter.start()
        starter.join(START_TIMEOUT)
        if starter.is_alive() or not _listening(self.port):
            raise AssertionError(f"moto S3 server did not listen on 127.0.0.1:{self.port} within "
                                 f"{START_TIMEOUT}s (port taken?)")
        self._server = server
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused) until ``start()`` again, on the same port."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        deadline = time.monotonic() + START_TIMEOUT
        while _listening(self.port):
            assert time.monotonic() < deadline, f"moto S3 server on port {self.port} did not stop"
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of this endpoint with the dummy credentials (setup and inspection only)."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=DUMMY_KEY, aws_secret_access_key=DUMMY_SECRET)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"ckpt-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def _reset_auth(self, count: str) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def require_credentials(self) -> tuple[str, str]:
        """From now on, only the returned (key, secret) of an IAM user allowed s3:* is accepted (moto
        checks signatures against its IAM); ``accept_any_credentials()`` undoes it."""
        iam = self.client("iam")
        user = f"ckpt-{secrets.token_hex(4)}"
        iam.create_user(UserName=user)
        allow = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        policy = {"Version": "2012-10-17", "Statement": [allow]}
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self._reset_auth("0")
        return key["AccessKeyId"], key["SecretAccessKey"]

    def accept_any_credentials(self) -> None:
        self._reset_auth("inf")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def point_env_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp_dir: str) -> None:
    """The test's environment (and its child processes'): this endpoint, dummy credentials, no AWS
    config of the machine's, and few retries so a refused connection fails in seconds."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", DUMMY_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_dir}/no-aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_dir}/no-aws-credentials")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class S3Bucket:
    server: S3Server
    bucket: str

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def keys(self, prefix: str = "") -> dict[str, int]:
        """Every object key below ``prefix`` -> size (boto3, not the code under test)."""
        out: dict[str, int] = {}
        for page in self.server.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                                   Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def multipart_uploads(self) -> list[str]:
        """Keys of the multipart uploads begun and neither completed nor aborted."""
        resp = self.server.client().list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"] for u in resp.get("Uploads", [])]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> S3Bucket:
    point_env_at(monkeypatch, s3_server.endpoint, str(tmp_path))
    return S3Bucket(s3_server, s3_server.create_bucket())


@pytest.fixture
def s3_target(s3: S3Bucket) -> Any:
    from ckptwatch.mirror.fsspec_target import FsspecTarget

    return FsspecTarget(s3.url("target"))
