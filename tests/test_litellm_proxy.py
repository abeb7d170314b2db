"""Through the real LiteLLM proxy (the `gateway` extra: litellm[proxy], a pinned release),
started on 127.0.0.1 in front of the simulator. Skipped when it is not installed."""
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import make_prompts, results, wait_until

import batchgen
from batchgen.simulator import SimulatorThread

MASTER_KEY = "sk-litellm-test-master"


def litellm_command():
    """The proxy's command: next to this Python (the extra installed here), else on PATH."""
    beside = Path(sys.executable).parent / "litellm"
    return str(beside) if beside.exists() else shutil.which("litellm")


pytestmark = pytest.mark.skipif(
    litellm_command() is None,
    reason="LiteLLM's proxy is not installed: pip install -e '.[gateway]' (litellm[proxy], pinned)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def proxy(tmp_path):
    """(the proxy's /v1 URL, the simulator behind it); the simulator's quota is 3 images."""
    with SimulatorThread(quota_images=3) as sim:
        config = tmp_path / "litellm.yaml"
        config.write_text(f"""\
model_list:
  - model_name: gpt-image-2
    litellm_params:
      model: openai/gpt-image-2
      api_base: {sim.openai_base_url}
      api_key: {sim.config.token}
      num_retries: 0
      max_retries: 0
litellm_settings:
  num_retries: 0
  request_timeout: 600
router_settings:
  num_retries: 0
general_settings:
  master_key: {MASTER_KEY}
""")
        port = free_port()
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
               "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
        log = open(tmp_path / "litellm.log", "wb")
        process = subprocess.Popen([litellm_command(), "--config", str(config), "--host", "127.0.0.1",
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: answers(base + "/health/liveliness") or process.poll() is not None,
                       timeout=180, what="the LiteLLM proxy to start")
            if process.poll() is not None:
                pytest.fail("the LiteLLM proxy did not start:\n" + (tmp_path / "litellm.log").read_text()[-2000:])
            yield base + "/v1", sim
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def test_a_spent_account_behind_the_real_litellm_proxy_stops_the_run(tmp_path, proxy):
    base_url, sim = proxy
    csv = make_prompts(tmp_path / "p.csv", 6)
    summary = batchgen.run(str(csv), out=str(tmp_path / "out"), provider="openai", base_url=base_url,
                           defaults={"model": "gpt-image-2", "quality": "low", "size": "1024x1024"},
                           environ={"OPENAI_API_KEY": MASTER_KEY}, concurrency=1, max_retries=8,
                           backoff_base=0.01, timeout=60)
    df = results(tmp_path / "out")
    ok = df[df.status == "ok"]
    assert summary.exit_status == 3 and summary.stopped == "insufficient_quota"
    assert "top it up" in summary.stop_message
    assert summary.requests_sent == 4 and len(ok) == 3   # the refused one, then nothing more
    # LiteLLM 1.82.6's image endpoint still retries the 429 upstream (its OpenAI client's own
    # two retries), whatever num_retries and max_retries say: the README says to expect it
    assert sim.stats.requests >= summary.requests_sent
    assert ok.trace_id.notna().all() and ok.trace_id.nunique() == 3    # x-litellm-call-id
    assert (ok.output_tokens == 272).all()                    # the upstream's usage, passed on
