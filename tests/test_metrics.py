"""Every run's metrics reach a real Prometheus Pushgateway (or a node-exporter textfile), failures included."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_HEAD, EXAMPLE_REVISIONS, run_dbmigrate

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    """A real Pushgateway (Debian's prometheus-pushgateway) on a free loopback port, in memory only."""
    for _ in range(5):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (tmp_path / f"pushgateway-{port}.log").open("w")
        process = subprocess.Popen(
            [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="], stdout=log, stderr=log
        )
        if _serving(url, process):
            break
        process.kill()
        process.wait()
        log.close()
    else:
        pytest.fail("could not start prometheus-pushgateway")
    yield url
    process.terminate()
    process.wait(timeout=10)
    log.close()


def _serving(url: str, process: subprocess.Popen[bytes]) -> bool:
    """Whether our process answers on url (not another process that took the port first)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            scrape(url)
        except OSError:
            time.sleep(0.1)
            continue
        time.sleep(0.2)
        return process.poll() is None
    return False


def metric_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


def value(text: str, name: str) -> float:
    """The value of the first sample of ``name`` (Prometheus text format)."""
    return float(metric_lines(text, name)[0].rsplit(" ", 1)[1])


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_successful_run_pushes_durations_outcome_and_current_revision(
    project: Path, database_url: str, pushgateway: str
) -> None:
    proc = run_dbmigrate(
        "upgrade",
        "--pushgateway",
        pushgateway,
        "--metrics-grouping",
        "release=shop,namespace=prod",
        cwd=project,
        database_url=database_url,
    )

    assert proc.returncode == 0, proc.stderr
    metrics = scrape(pushgateway)
    success = metric_lines(metrics, "dbmigrate_last_run_success")
    assert success and all('release="shop"' in line and 'namespace="prod"' in line for line in success)
    assert value(metrics, "dbmigrate_last_run_success") == 1
    durations = metric_lines(metrics, "dbmigrate_step_duration_seconds")
    assert {r for r in EXAMPLE_REVISIONS if any(f'revision="{r}"' in line for line in durations)} == set(
        EXAMPLE_REVISIONS
    )
    assert all('direction="upgrade"' in line and 'status="applied"' in line for line in durations)
    assert any(
        f'revision="{EXAMPLE_HEAD}"' in line for line in metric_lines(metrics, "dbmigrate_current_revision_info")
    )
    assert value(metrics, "dbmigrate_pending_revisions") == 0
    assert any('outcome="applied"' in line for line in metric_lines(metrics, "dbmigrate_runs"))


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_failed_run_pushes_its_exit_code_and_the_failed_step(
    project: Path, database_url: str, pushgateway: str
) -> None:
    (project / "alembic" / "versions" / "0007_bad.py").write_text(
        'revision = "0007_bad"\ndown_revision = "0006_name_contract"\nfrom alembic import op\n\n\n'
        'def upgrade():\n    op.execute("SELECT * FROM no_such_table")\n\n\ndef downgrade():\n    pass\n'
    )

    proc = run_dbmigrate("upgrade", "--pushgateway", pushgateway, cwd=project, database_url=database_url)

    assert proc.returncode == 1
    metrics = scrape(pushgateway)
    assert value(metrics, "dbmigrate_last_run_exit_code") == 1
    assert value(metrics, "dbmigrate_last_run_success") == 0
    assert any(
        'revision="0007_bad"' in line and 'status="failed"' in line
        for line in metric_lines(metrics, "dbmigrate_step_duration_seconds")
    )
    assert value(metrics, "dbmigrate_pending_revisions") == 1


def test_an_unreachable_database_still_pushes_exit_code_3(project: Path, pushgateway: str) -> None:
    proc = run_dbmigrate(
        "upgrade",
        "--pushgateway",
        pushgateway,
        "--wait-timeout",
        "1",
        cwd=project,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none",
    )

    assert proc.returncode == 3
    assert value(scrape(pushgateway), "dbmigrate_last_run_exit_code") == 3


@pytest.mark.parametrize("backend", ["sqlite"])
def test_metrics_for_the_node_exporter_textfile_collector(project: Path, database_url: str, tmp_path: Path) -> None:
    textfile = tmp_path / "dbmigrate.prom"

    proc = run_dbmigrate("upgrade", "--metrics-textfile", str(textfile), cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    assert value(textfile.read_text(), "dbmigrate_last_run_success") == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_unreachable_pushgateway_does_not_fail_the_migration(project: Path, database_url: str) -> None:
    proc = run_dbmigrate(
        "upgrade", "--pushgateway", f"http://127.0.0.1:{free_port()}", cwd=project, database_url=database_url
    )

    assert proc.returncode == 0, proc.stderr
    assert "could not push metrics" in proc.stderr
