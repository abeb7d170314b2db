"""Downloads accept only http(s), follow no redirect to another scheme, stop at a size cap."""
import asyncio

import pytest
from aiohttp import web
from conftest import TOKEN

from batchgen.exceptions import DownloadFailed
from batchgen.sending.client import Endpoint, ImagesClient


async def with_client(sim_url, fn):
    endpoint = Endpoint(url=sim_url, token=TOKEN, provider="acedata")
    async with ImagesClient(endpoint, concurrency=2, timeout=5) as client:
        return await fn(client)


async def _serve(routes: dict):
    """A throwaway aiohttp server on loopback with these GET routes; returns (runner, base URL)."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


async def _redirector():
    async def to_file(request):
        raise web.HTTPFound("file:///etc/passwd")

    async def loop(request):
        raise web.HTTPFound("/loop")

    async def big(request):
        return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"0" * 5000)

    return await _serve({"/to-file": to_file, "/loop": loop, "/big": big})


def test_download_refuses_other_schemes_redirects_to_them_and_oversize(sim):
    async def main():
        runner, base = await _redirector()
        try:
            async def check(client):
                with pytest.raises(DownloadFailed, match="non-http"):
                    await client.download("file:///etc/passwd")
                with pytest.raises(DownloadFailed, match="non-http"):
                    await client.download(base + "/to-file")
                with pytest.raises(DownloadFailed, match="redirects"):
                    await client.download(base + "/loop")
                with pytest.raises(DownloadFailed, match="larger than 1000 bytes"):
                    await client.download(base + "/big", max_bytes=1000)
                assert len(await client.download(base + "/big")) == 5008
            await with_client(sim.acedata_url, check)
        finally:
            await runner.cleanup()
    asyncio.run(main())


def test_the_token_goes_only_to_the_endpoint_not_to_image_links(sim):
    seen = {}

    async def main():
        async def grab(request):
            seen["auth"] = request.headers.get("Authorization")
            return web.Response(body=b"x")
        runner, base = await _serve({"/img": grab})
        try:
            await with_client(sim.acedata_url, lambda c: c.download(f"{base}/img"))
        finally:
            await runner.cleanup()
    asyncio.run(main())
    assert seen == {"auth": None}


def test_the_token_is_not_in_the_output_of_a_failing_run(cli, tmp_path, prompts_csv):
    from batchgen.simulator import SimulatorThread
    with SimulatorThread(fail_500=1.0, token="s3cret-token-value") as sim:
        r = cli("run", prompts_csv, "--out", tmp_path / "out", "--base-url", sim.acedata_url, "--model", "dall-e-3",
                "--max-retries", "1", env={"ACEDATA_API_TOKEN": "s3cret-token-value"})
    assert r.exit_code == 1
    assert "s3cret-token-value" not in r.output
    assert not any(b"s3cret-token-value" in p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
