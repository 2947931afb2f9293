"""Start and stop the lab's own services (app, DNS server, SMTP sink) as detached processes.

Each ``start_*`` launches ``python -m drorch.lab.<module>`` in its own session (so it
outlives the caller and can be stopped as a group), appends its output to ``log_path``,
waits until it answers on its address (bounded by ``timeout``) and returns its PID. When
the address is already taken, nothing is started; when the process does not come up in
time, or exits early, it is stopped; both raise ``ServiceStartError`` (with the tail of
its log for the latter). ``stop_pid`` ends one by PID.

Lab processes talk to moto only, so they get the lab's fake AWS credentials ("test")
and never the caller's real ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from drorch.procs import pid_alive


class ServiceStartError(RuntimeError):
    """A lab service did not answer within its start timeout."""


def configure_process_logging() -> None:
    """One JSON line per event on stdout (the service's log file); for the ``main``s."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def lab_env() -> dict[str, str]:
    """The caller's environment with real AWS credentials replaced by moto's."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")}
    env.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", PYTHONUNBUFFERED="1")
    return env


def ensure_free(host: str, port: int, *, udp: bool = False) -> None:
    """Raise ``ServiceStartError`` when ``host:port`` is taken (so a readiness probe cannot be
    answered by some other server already listening there)."""
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise ServiceStartError(f"{host}:{port} is not free: {exc}") from None


def _spawn(module: str, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True, env=lab_env(),
        )


def _wait_ready(proc: subprocess.Popen[bytes], ready: Callable[[], bool], log_path: Path,
                timeout: float) -> int:
    """Poll ``ready`` until it holds or the process exits; bounded by ``timeout``."""

    def attempt() -> bool:
        if proc.poll() is not None:
            return False
        try:
            return ready()
        except OSError:
            return False

    def gave_up_or_exited(ok: bool) -> bool:
        return not ok and proc.poll() is None

    up = Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.05),
                  retry=retry_if_result(gave_up_or_exited),
                  retry_error_callback=lambda _state: False)(attempt)
    if up and proc.poll() is None:
        return proc.pid
    code = proc.poll()
    stop_pid(proc.pid)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    why = f"exited with {code}" if code is not None else f"did not answer in {timeout} s"
    raise ServiceStartError(f"{proc.args[2]} {why}; log tail:\n{tail}")


def _http_answers(url: str) -> bool:
    """True when ``url`` gives any HTTP status (503 from /health still means it is up)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status)
    except urllib.error.HTTPError:
        return True


def _dns_answers(host: str, port: int, zone: str) -> bool:
    import dns.exception
    import dns.message
    import dns.query

    try:
        dns.query.udp(dns.message.make_query(zone, "SOA"), host, port=port, timeout=1)
    except dns.exception.Timeout:
        return False
    return True


def _smtp_answers(host: str, port: int) -> bool:
    with smtplib.SMTP(host, port, timeout=2) as smtp:
        return smtp.noop()[0] == 250


def start_app(config: dict[str, Any] | Path, log_path: Path, *, timeout: float = 20) -> int:
    """Start one region's app from an ``AppConfig`` dict or JSON file; returns its PID.

    A dict is written next to the log as ``<log stem>.json``.
    """
    if isinstance(config, Path):
        cfg_path, cfg = config, json.loads(config.read_text())
    else:
        cfg_path, cfg = log_path.with_suffix(".json"), config
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps(config, indent=1))
    host, port = cfg.get("listen_host", "127.0.0.1"), int(cfg["listen_port"])
    ensure_free(host, port)
    proc = _spawn("drorch.lab.app", ["--config", str(cfg_path)], log_path)
    url = f"http://{host}:{port}/health"
    return _wait_ready(proc, lambda: _http_answers(url), log_path, timeout)


def start_aws_proxy(listen_port: int, upstream_port: int, *, log_path: Path,
                    host: str = "127.0.0.1", timeout: float = 20) -> int:
    """Start one region's AWS endpoint (``drorch.lab.aws_proxy``) relaying to moto on
    ``upstream_port``; ready when moto answers through it. Returns its PID."""
    ensure_free(host, listen_port)
    proc = _spawn("drorch.lab.aws_proxy", ["--listen", f"{host}:{listen_port}",
                                           "--upstream", f"127.0.0.1:{upstream_port}"],
                  log_path)
    url = f"http://{host}:{listen_port}/moto-api/"
    return _wait_ready(proc, lambda: _http_answers(url), log_path, timeout)


def start_dns(host: str, port: int, *, endpoint_url: str, zone: str, log_path: Path,
              region: str = "us-east-1", timeout: float = 20) -> int:
    """Start the authoritative DNS server for ``zone``; returns its PID."""
    args = ["--listen", f"{host}:{port}", "--endpoint-url", endpoint_url, "--zone", zone,
            "--region", region]
    ensure_free(host, port, udp=True)
    proc = _spawn("drorch.lab.dns_server", args, log_path)
    return _wait_ready(proc, lambda: _dns_answers(host, port, zone), log_path, timeout)


def start_smtp_sink(host: str, port: int, *, store: Path, log_path: Path,
                    timeout: float = 20) -> int:
    """Start the SMTP sink storing messages under ``store``; returns its PID."""
    ensure_free(host, port)
    proc = _spawn("drorch.lab.smtp_sink", ["--listen", f"{host}:{port}", "--store", str(store)],
                  log_path)
    return _wait_ready(proc, lambda: _smtp_answers(host, port), log_path, timeout)


def stop_pid(pid: int, *, timeout: float = 5) -> bool:
    """SIGTERM the service (its whole session group when it leads one), SIGKILL after
    ``timeout``; True once it is gone. Idempotent: a PID that is gone returns True.
    """
    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pid_alive(pid):
            break
        send(sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.02)
    _reap(pid)
    return not pid_alive(pid)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
