"""The endpoints beyond chat (issue 19 item 7), each through the official openai SDK where it
has the call (plain HTTP for Gemini), with billing in the chain: the exact charge, the bytes
the client got, and a clean audit (the `billed` fixture audits every proxy it started)."""

from __future__ import annotations

import warnings
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import aiohttp
import openai
import pytest

from plugins.billing.apikeys import generate_key
from plugins.billing.tokenizer import Tokenizer
from tests.e2e.conftest import PRICES, Billed, BilledFactory

PNG = b"\x89PNG\r\n\x1a\n" + bytes(200)


def quota(usd_per_million: Decimal, units: int) -> int:
    """units × price per 1M × 500000 quota per USD, rounded half up once (minimum 1)."""
    exact = Decimal(units) * usd_per_million / 1_000_000 * 500_000
    q = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return 1 if q == 0 and exact > 0 else q


async def priced(billed: BilledFactory, extra: dict[str, Any], **kw: Any) -> Billed:
    return await billed(pricing={"fallback": "litellm", "models": {**PRICES, **extra}}, **kw)


async def rows(b: Billed) -> int:
    await b.proxy.settled()
    return len(await b.store.query_logs(user=b.user, limit=100))


# -- speech -------------------------------------------------------------------------------


async def test_speech_is_charged_per_input_character(billed: BilledFactory) -> None:
    b = await priced(billed, {"mock-tts": {"characters": 15}})
    before = await b.balance()
    text = "Grüße aus Zürich ✓ " * 37  # non-ASCII on purpose: characters, not bytes
    speech = await b.openai().audio.speech.create(model="mock-tts", voice="alloy", input=text)
    audio = speech.read()
    assert audio[:2] == b"\xff\xf3" and len(audio) >= 96 * len(text.split())
    row = await b.last_log()
    expected = quota(Decimal(15), len(text))  # 703 characters at $15 per 1M
    assert (row.charge, row.details.usage_source, row.details.input) == (expected, "request", len(text))
    assert row.estimate == expected  # the hold was the exact charge
    assert await b.balance() == before - expected


async def test_speech_reference_price_from_litellm_per_character(billed: BilledFactory) -> None:
    b = await priced(billed, {})
    before = await b.balance()
    text = "The quick brown fox jumps over the lazy dog."
    await b.openai().audio.speech.create(model="tts-1-hd", voice="nova", input=text)
    row = await b.last_log()
    # LiteLLM lists tts-1-hd at input_cost_per_character 3e-05: $30 per 1M characters.
    assert row.charge == quota(Decimal(30), len(text)) == 660
    assert await b.balance() == before - 660


async def test_speech_upstream_failure_releases_everything(billed: BilledFactory) -> None:
    b = await priced(billed, {"mock-tts": {"characters": 15}})
    before = await b.balance()
    b.upstream.behaviour.fail_status = 500
    with pytest.raises(openai.InternalServerError):
        await b.openai().audio.speech.create(model="mock-tts", voice="alloy", input="hello there")
    row = await b.last_log()
    assert (row.charge, row.details.end_reason) == (0, "upstream_error")
    assert await b.balance() == before


async def test_speech_model_priced_per_character_is_refused_elsewhere(billed: BilledFactory) -> None:
    b = await priced(billed, {"mock-tts": {"characters": 15}})
    with pytest.raises(openai.BadRequestError) as err:
        await b.openai().chat.completions.create(model="mock-tts", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_priced" and "/v1/audio/speech" in err.value.message
    assert await rows(b) == 0


# -- images: edits and variations (multipart) ----------------------------------------------


async def test_image_edit_is_charged_per_image_from_the_form(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    result = await b.openai().images.edit(
        model="mock-image", image=("cat.png", PNG, "image/png"), prompt="add a hat", n=2
    )
    assert result.data is not None and len(result.data) == 2 and result.data[0].b64_json
    sent = b.upstream.requests[-1]
    assert sent.path == "/v1/images/edits" and PNG in sent.body  # relayed byte for byte
    row = await b.last_log()
    assert (row.charge, row.details.model) == (40_000, "mock-image")  # 2 × $0.04
    assert await b.balance() == before - 40_000


async def test_image_variation_is_charged_per_image(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    with warnings.catch_warnings():  # the SDK marks variations deprecated; the API still serves them
        warnings.simplefilter("ignore", DeprecationWarning)
        result = await b.openai().images.create_variation(model="mock-image", image=("cat.png", PNG, "image/png"), n=3)
    assert result.data is not None and len(result.data) == 3
    assert (await b.last_log()).charge == 60_000
    assert await b.balance() == before - 60_000


async def test_token_priced_image_edit_bills_the_reported_usage(billed: BilledFactory) -> None:
    b = await priced(billed, {"mock-gpt-image": {"input": 5, "output": 40, "image_input": 10}})
    before = await b.balance()
    result = await b.openai().images.edit(
        model="mock-gpt-image", image=("cat.png", PNG, "image/png"), prompt="a hat on the cat"
    )
    assert result.usage is not None
    text = result.usage.input_tokens_details.text_tokens
    image = result.usage.input_tokens_details.image_tokens
    usd_per_m = text * Decimal(5) + image * Decimal(10) + result.usage.output_tokens * Decimal(40)
    row = await b.last_log()
    assert (row.details.input, row.details.images, row.details.usage_source) == (text, image, "upstream")
    assert row.charge == quota(usd_per_m, 1)
    assert await b.balance() == before - row.charge


async def test_image_edit_bad_n_is_refused_before_any_hold(billed: BilledFactory) -> None:
    b = await billed()
    form = aiohttp.FormData()
    form.add_field("model", "mock-image")
    form.add_field("prompt", "x")
    form.add_field("n", "two")
    form.add_field("image", PNG, filename="a.png", content_type="image/png")
    async with aiohttp.ClientSession() as s:
        async with s.post(
            b.proxy.openai_base + "/images/edits", data=form, headers={"Authorization": f"Bearer {b.key}"}
        ) as resp:
            body = await resp.json()
    assert resp.status == 400 and body["error"]["message"].startswith("n must be an integer")
    assert await rows(b) == 0 and len(b.upstream.requests) == 0


async def test_oversized_upload_is_413_before_any_hold(billed: BilledFactory) -> None:
    b = await billed(server={"max_body_bytes": 64 * 1024})
    before = await b.balance()
    with pytest.raises(openai.APIStatusError) as err:
        await b.openai().images.edit(
            model="mock-image", image=("big.png", PNG + bytes(100_000), "image/png"), prompt="x"
        )
    assert err.value.status_code == 413
    assert err.value.body is not None and "exceeds 65536 bytes" in str(err.value.body)
    assert await rows(b) == 0 and await b.balance() == before and not b.upstream.requests


# -- moderations ---------------------------------------------------------------------------


async def test_moderation_is_free_unless_priced(billed: BilledFactory) -> None:
    b = await billed(quota=0)  # no funds at all: a free call still answers
    result = await b.openai().moderations.create(input=["I will kill the process", "hello"])
    assert [r.flagged for r in result.results] == [True, False]
    # No model named: OpenAI's default, which LiteLLM prices at 0, is free too.
    result = await b.openai().moderations.create(model="omni-moderation-latest", input="hi")
    assert result.results[0].flagged is False
    assert await rows(b) == 0


async def test_priced_moderation_is_charged_for_its_input(billed: BilledFactory) -> None:
    b = await priced(billed, {"mock-moderation": {"input": 2, "output": 2}})
    before = await b.balance()
    texts = ["is this fine?", "a second, longer text to moderate for the test"]
    await b.openai().moderations.create(model="mock-moderation", input=texts)
    tokens = sum(Tokenizer().count(t, "mock-moderation") for t in texts)
    row = await b.last_log()
    assert (row.details.input, row.details.output, row.details.usage_source) == (tokens, 0, "estimated")
    assert row.charge == quota(Decimal(2), tokens)
    assert await b.balance() == before - row.charge


async def test_moderation_still_needs_a_valid_key(billed: BilledFactory) -> None:
    b = await billed()
    client = openai.AsyncOpenAI(base_url=b.proxy.openai_base, api_key="wk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.moderations.create(input="hi")


# -- Gemini --------------------------------------------------------------------------------


async def gemini(b: Billed, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s:
        async with s.post(b.proxy.url + path, json=body, headers={"x-goog-api-key": b.key}) as resp:
            return resp.status, await resp.json()


CONTENT = {"parts": [{"text": "How many tokens are in this sentence?"}]}


@pytest.mark.parametrize("prefix", ["/v1beta", "/v1"])
async def test_gemini_count_tokens_is_free(billed: BilledFactory, prefix: str) -> None:
    b = await billed(quota=0)
    status, body = await gemini(b, f"{prefix}/models/mock-gemini:countTokens", {"contents": [CONTENT]})
    assert status == 200 and body["totalTokens"] == 7 + 5  # the mock's words + its overhead
    assert b.upstream.requests[-1].path == f"{prefix}/models/mock-gemini:countTokens"
    assert await rows(b) == 0


@pytest.mark.parametrize("prefix", ["/v1beta", "/v1"])
async def test_gemini_embed_content_is_charged_for_its_input(billed: BilledFactory, prefix: str) -> None:
    b = await billed()
    before = await b.balance()
    status, body = await gemini(
        b, f"{prefix}/models/mock-gemini-embed:embedContent", {"content": CONTENT, "outputDimensionality": 4}
    )
    assert status == 200 and len(body["embedding"]["values"]) == 4
    tokens = Tokenizer().count(CONTENT["parts"][0]["text"], "mock-gemini-embed")
    row = await b.last_log()
    assert (row.details.input, row.details.usage_source) == (tokens, "estimated")
    assert row.charge == quota(Decimal("0.30"), tokens)  # mock-gemini* input price
    assert await b.balance() == before - row.charge


async def test_gemini_batch_embed_contents_charges_every_request(billed: BilledFactory) -> None:
    b = await billed()
    texts = ["first text to embed", "the second one, a little longer than the first"]
    reqs = [{"model": "models/mock-gemini-embed", "content": {"parts": [{"text": t}]}} for t in texts]
    status, body = await gemini(b, "/v1beta/models/mock-gemini-embed:batchEmbedContents", {"requests": reqs})
    assert status == 200 and len(body["embeddings"]) == 2
    tokens = sum(Tokenizer().count(t, "mock-gemini-embed") for t in texts)
    assert (await b.last_log()).charge == quota(Decimal("0.30"), tokens)


async def test_gemini_v1_path_generates_and_bills(billed: BilledFactory) -> None:
    b = await billed()
    before = await b.balance()
    status, body = await gemini(b, "/v1/models/mock-gemini:generateContent", {"contents": [CONTENT]})
    assert status == 200 and body["candidates"][0]["content"]["parts"][0]["text"]
    meta = body["usageMetadata"]
    row = await b.last_log()
    usd_per_m = meta["promptTokenCount"] * Decimal("0.30") + meta["candidatesTokenCount"] * Decimal("2.50")
    assert (row.charge, row.details.usage_source) == (quota(usd_per_m, 1), "upstream")
    assert await b.balance() == before - row.charge


async def test_unknown_gemini_method_is_a_gemini_404(billed: BilledFactory) -> None:
    b = await billed()
    status, body = await gemini(b, "/v1/models/mock-gemini:predictLongRunning", {})
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"


# -- /v1/models ----------------------------------------------------------------------------


async def test_models_list_shows_only_what_the_key_may_use(billed: BilledFactory) -> None:
    b = await billed()
    everything = [m async for m in b.openai().models.list()]
    assert {m.id for m in everything} >= {"mock-gpt", "mock-claude", "mock-gemini"}
    assert {m.owned_by for m in everything} == {"weir"}  # never the upstream's name ("fake")
    clear, digest, hint = generate_key()
    await b.store.create_key(b.user, digest, name="narrow", models=["mock-gpt*", "mock-embed"], hint=hint)
    narrow = openai.AsyncOpenAI(base_url=b.proxy.openai_base, api_key=clear, max_retries=0)
    listed = sorted([m.id async for m in narrow.models.list()])
    assert listed == ["mock-embed", "mock-gpt", "mock-gpt-mini"]
    one = await narrow.models.retrieve("mock-gpt-mini")
    assert (one.id, one.owned_by) == ("mock-gpt-mini", "weir")
    with pytest.raises(openai.PermissionDeniedError):  # the key may not use it
        await narrow.models.retrieve("mock-claude")
    with pytest.raises(openai.NotFoundError):
        await b.openai().models.retrieve("no-such-model")
    assert await rows(b) == 0


# -- the upstream's own version prefix -------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1beta", "/v1"])
async def test_real_gemini_upstream_gets_its_own_version_prefix(
    make_proxy: Any, fake_upstream: Any, prefix: str
) -> None:
    gem = {"name": "g", "type": "gemini", "base_url": fake_upstream.url + "/v1beta", "api_key": "gk", "models": ["*"]}
    oai = {"name": "o", "type": "openai", "base_url": fake_upstream.url + "/v1", "api_key": "ok", "models": ["*"]}
    proxy = await make_proxy(upstreams=[gem, oai])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}{prefix}/models/mock-gemini:countTokens", json={"contents": [CONTENT]}) as resp:
            assert resp.status == 200 and (await resp.json())["totalTokens"] == 12
        async with s.post(
            f"{proxy.url}/v1/audio/speech", json={"model": "mock-tts", "input": "hi", "voice": "x"}
        ) as resp:
            assert resp.status == 200 and resp.content_type == "audio/mpeg"
    gemini_call, speech_call = fake_upstream.requests[-2:]
    assert (gemini_call.path, gemini_call.key) == ("/v1beta/models/mock-gemini:countTokens", "gk")
    assert (speech_call.path, speech_call.key) == ("/v1/audio/speech", "ok")
