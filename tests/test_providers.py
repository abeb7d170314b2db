"""Providers are one table: a new one is one entry, and everything reads it."""
import pandas as pd
from conftest import PROMPTS, TOKEN, results

import batchgen
from batchgen.exceptions import ApiError
from batchgen.rules import providers
from batchgen.sending.classify import Decision, classify, stop_advice


def test_a_new_provider_is_one_entry(monkeypatch, fresh_sim, tmp_path):
    acme = providers.Provider(
        name="acme", token_variable="ACME_KEY", default_endpoint=fresh_sim.openai_base_url + "/images/generations",
        base_url_variable=None, parse_error=providers.PROVIDERS["openai"].parse_error)
    monkeypatch.setitem(providers.PROVIDERS, "acme", acme)
    csv = tmp_path / "p.csv"
    pd.DataFrame({"prompt": PROMPTS}).to_csv(csv, index=False)

    summary = batchgen.run(csv, out=str(tmp_path / "out"), provider="acme", environ={"ACME_KEY": TOKEN},
                           model="gpt-image-2", quality="low")
    assert summary.ok == 3 and summary.exit_status == 0
    assert set(results(tmp_path / "out").provider) == {"acme"}

    # A rejected token stops the run, and the advice names this provider's variable.
    stopped = batchgen.run(csv, out=str(tmp_path / "out2"), provider="acme", environ={"ACME_KEY": "wrong"},
                           model="gpt-image-2", quality="low")
    assert stopped.exit_status == 3 and "ACME_KEY" in stopped.stop_message


def test_every_provider_says_what_to_fix_and_stops_on_its_codes():
    for p in providers.PROVIDERS.values():
        for code in p.auth_codes:
            error = ApiError("no", code=code, http_status=403)
            assert classify(error) is Decision.STOP
            assert p.token_variable in stop_advice(error, p.name)
        for code in p.quota_codes:
            error = ApiError("no", code=code, http_status=429)
            assert classify(error) is Decision.STOP
            assert "quota" in stop_advice(error, p.name)


def test_the_command_line_offers_every_provider(cli):
    out = cli("run", "--help").output
    for name in providers.PROVIDERS:
        assert name in out
