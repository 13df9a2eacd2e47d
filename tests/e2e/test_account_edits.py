"""Account edits seen by a running Weir: a disabled user's keys and an edited key are refused
in the endpoint's dialect, nothing is held or charged for them, and enabling again works.

The edits go through the account functions (`plugins.billing.accounts`), the ones the CLI
and the admin API call, on the proxy's own store; requests go through the official SDKs.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from plugins.billing.accounts import Accounts
from plugins.billing.accounts import keys as key_edits
from plugins.billing.accounts import users as user_edits
from plugins.billing.apikeys import hash_key
from tests.e2e.conftest import Billed, BilledFactory

CHAT = [{"role": "user", "content": "hi"}]


async def _chat(b: Billed, max_tokens: int = 5) -> int:
    resp = await b.openai().chat.completions.create(model="mock-gpt", messages=CHAT, max_tokens=max_tokens)  # type: ignore[arg-type]
    assert resp.usage is not None
    return resp.usage.total_tokens


async def _key_id(b: Billed) -> str:
    key = await b.store.find_key(hash_key(b.key))
    assert key is not None
    return key.id


async def test_a_disabled_user_is_refused_in_each_dialect_and_enabled_again(billed: BilledFactory) -> None:
    b = await billed(auth_cache_ttl=0)  # no cached user: the flag applies to the next request
    acc = Accounts(b.store, actor="test")
    before = await b.balance()
    await user_edits.set_user(acc, b.user, disabled=True)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await _chat(b)
    assert refused.value.status_code == 403
    assert refused.value.code == "user_disabled"
    with pytest.raises(anthropic.PermissionDeniedError) as claude:
        await b.anthropic().messages.create(model="mock-claude", max_tokens=5, messages=CHAT)  # type: ignore[arg-type]
    assert claude.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert "disabled" in claude.value.body["error"]["message"]  # type: ignore[index]
    assert await b.balance() == before and await b.store.open_holds() == [] and b.upstream.requests == []
    await user_edits.set_user(acc, b.user, disabled=False)
    assert await _chat(b) > 0
    assert await b.balance() < before
    row = await b.last_log()
    assert before - await b.balance() == row.charge > 0


async def test_an_edited_key_is_refused_then_allowed(billed: BilledFactory) -> None:
    b = await billed(auth_cache_ttl=0)
    acc = Accounts(b.store, actor="test")
    key_id, before = await _key_id(b), await b.balance()
    await key_edits.update_key(acc, key_id, enabled=False)
    with pytest.raises(openai.PermissionDeniedError) as off:
        await _chat(b)
    assert off.value.code == "key_disabled"
    await key_edits.update_key(acc, key_id, enabled=True, models=["mock-claude*"])
    with pytest.raises(openai.PermissionDeniedError) as model:
        await _chat(b)
    assert model.value.code == "model_not_allowed"
    assert await b.balance() == before and b.upstream.requests == []
    limited = await key_edits.update_key(acc, key_id, models=[], quota=1)  # less than the estimate
    assert (limited["models"], limited["remaining_quota"]) == ([], 1)
    with pytest.raises(openai.APIStatusError) as short:
        await _chat(b, max_tokens=100)
    assert short.value.status_code == 402 and "key quota" in short.value.message
    await key_edits.update_key(acc, key_id, unlimited=True)
    assert await _chat(b) > 0
    assert await b.balance() < before
