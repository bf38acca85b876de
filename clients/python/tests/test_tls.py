"""An https:// server whose certificate a private CA signed: the client and
the worker trust it through ``ca``, and refuse it without."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from conftest import RunningWorker, Server, worker_kwargs
from dispatch_client import Client, Unreachable, Worker


def make_certificates(folder: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("the TLS test makes its certificates with openssl: apt-get install openssl")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-days", "2", "-subj", "/CN=test CA", "-keyout", "ca-key.pem", "-out", "ca.pem")
    openssl("req", *ec, "-subj", "/CN=localhost", "-keyout", "server-key.pem", "-out", "server.csr")
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
        "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
    )


def test_https_with_a_private_ca(
    tmp_path: Path, make_server: Callable[..., Server], start_worker: Callable[[Worker], RunningWorker]
) -> None:
    make_certificates(tmp_path)
    server = make_server(["--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server-key.pem")])
    url = server.url.replace("http://", "https://")
    ca = str(tmp_path / "ca.pem")

    with pytest.raises(Unreachable):
        Client(url, token=server.admin, retry_for=0).health()

    client = Client(url, token=server.admin, ca=ca)
    worker = Worker(url, ca=ca, **worker_kwargs(server))
    worker.register("secure.echo", lambda payload, ctx: payload)
    start_worker(worker)
    task = client.submit("secure.echo", {"over": "tls"})
    assert client.wait(task["id"], timeout=60)["result"] == {"over": "tls"}
