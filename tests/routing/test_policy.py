"""ROUTING_POLICY's decisions (serve_app/routing/policy.py), in pure code."""

from __future__ import annotations

import pytest

from serve_app.routing.policy import (
    BLOCK_CHARS,
    CHARS_PER_TOKEN,
    REMEMBER,
    Decision,
    Policy,
    PrefixIndex,
    affinity_key,
    block_hashes,
    routing_text,
)

SYSTEM = "You are a careful assistant who answers in French. " * 20  # ~1,000 characters
A, B = "replica-a", "replica-b"


def chat(*turns: str, system: str = SYSTEM) -> dict:
    messages = [{"role": "system", "content": system}]
    for i, turn in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": turn})
    return {"model": "m", "messages": messages}


def test_a_conversations_later_turns_start_with_its_earlier_ones():
    first = routing_text(chat("What is the capital of France?"))
    second = routing_text(chat("What is the capital of France?", "Paris.", "And of Italy?"))
    assert first and second and second.startswith(first)
    hashes = block_hashes(second)
    assert block_hashes(first) == hashes[: len(block_hashes(first))]


def test_the_text_of_every_api_shape():
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert routing_text({"prompt": "abc"}) == "abc"
    assert routing_text({"prompt": ["first", "second"]}) == "first"
    assert routing_text({"prompt": [1, 2, 3]}) == "1 2 3"
    assert routing_text({"input": "hello", "instructions": "be brief"}) == "be briefhello"
    anthropic = {"system": "sys", "messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    assert routing_text(anthropic) == "sys<user>hi"
    with_tools = routing_text({"tools": tools, "messages": [{"role": "user", "content": "x"}]})
    assert with_tools.startswith('[{"function"') and with_tools.endswith("<user>x")
    assert routing_text({"model": "m"}) is None


def test_affinity_keys_in_order_of_precedence():
    body = {"prompt_cache_key": "k", "user": "u", "metadata": {"user_id": "a"}}
    assert affinity_key(body, session="s") == "s"
    assert affinity_key(body) == "k"
    assert affinity_key({"user": "u", "metadata": {"user_id": "a"}}) == "u"
    assert affinity_key({"metadata": {"user_id": "a"}}) == "a"
    assert affinity_key({"user": ""}) is None


def test_only_whole_blocks_are_hashed():
    assert block_hashes("x" * (BLOCK_CHARS - 1)) == []
    assert len(block_hashes("x" * (3 * BLOCK_CHARS + 5))) == 3
    # chained: the same block after different prefixes has different names
    assert (
        block_hashes("a" * BLOCK_CHARS + "c" * BLOCK_CHARS)[1]
        != (block_hashes("b" * BLOCK_CHARS + "c" * BLOCK_CHARS)[1])
    )


def test_a_conversation_sticks_to_the_replica_that_holds_it():
    policy = Policy("prefix")
    first = policy.choose([A, B], {}, routing_text(chat("Hello, how are you?")))
    assert first.reason == "no_match"
    other = policy.choose([A, B], {first.replica: 1}, routing_text(chat("x", system="other " * 99)))
    assert other.replica != first.replica and other.reason == "no_match"
    turn = routing_text(chat("Hello, how are you?", "Fine.", "Tell me more."))
    for _ in range(5):
        decision = policy.choose([A, B], {A: 1, B: 1}, turn)
        assert decision.replica == first.replica and decision.reason == "matched"
        assert decision.matched_chars >= len(SYSTEM) - BLOCK_CHARS


def test_load_beyond_the_bound_overrides_the_match():
    policy = Policy("prefix", max_imbalance=2)
    text = routing_text(chat("Hot prefix"))
    holder = policy.choose([A, B], {}, text).replica
    idle = B if holder == A else A
    assert policy.choose([A, B], {holder: 2}, text).replica == holder  # 2 more: within
    decision = policy.choose([A, B], {holder: 3}, text)  # 3 more: beyond
    assert decision.replica == idle and decision.reason == "load"
    # the idle one now holds the prefix too: both serve it from here on
    assert policy.choose([A, B], {holder: 5, idle: 4}, text).reason == "matched"


def test_one_hot_prefix_with_many_clients_keeps_every_replica_busy():
    policy = Policy("prefix", max_imbalance=4)
    loads = {A: 0, B: 0, "replica-c": 0}
    text = routing_text(chat("Same question from everyone"))
    for _ in range(60):  # requests that stay running
        loads[policy.choose(list(loads), loads, text).replica] += 1
    assert max(loads.values()) - min(loads.values()) <= 5, loads


def test_affinity_pins_a_key_and_moves_only_the_keys_of_a_replica_that_left():
    policy = Policy("prefix")
    keys = [f"user-{i}" for i in range(40)]
    three = [A, B, "replica-c"]
    pinned = {k: policy.choose(three, {}, affinity=k).replica for k in keys}
    assert set(pinned.values()) == set(three)  # spread
    assert all(policy.choose(three, {}, affinity=k).replica == pinned[k] for k in keys)
    after = {k: policy.choose([A, B], {}, affinity=k).replica for k in keys}
    assert all(after[k] == pinned[k] for k in keys if pinned[k] != "replica-c")
    assert policy.choose([A, B], {A: 9, B: 0}, affinity="user-x").replica == B


def test_replicas_that_leave_drop_their_blocks_and_new_ones_start_empty():
    index = PrefixIndex()
    hashes = block_hashes("y" * BLOCK_CHARS * 4)
    index.set_replicas([A])
    index.record(hashes, A)
    assert index.matched(hashes, A) == 4
    index.set_replicas([B])
    assert index.matched(hashes, A) == 0 and index.size(A) == 0 and index.size(B) == 0


def test_each_replicas_index_is_bounded_by_its_cache_and_evicts_the_least_recent():
    index = PrefixIndex()
    index.set_replicas([A])
    index.set_capacity(A, cache_tokens=8 * BLOCK_CHARS // CHARS_PER_TOKEN // REMEMBER)  # 8 blocks
    old = block_hashes("o" * BLOCK_CHARS * 6)
    new = block_hashes("n" * BLOCK_CHARS * 6)
    index.record(old, A)
    index.record(new, A)
    assert index.size(A) == 8
    assert index.matched(new, A) == 6
    assert index.matched(old, A) == 0  # its first blocks went first


def test_round_robin_and_least_loaded():
    rr = Policy("round_robin")
    assert {rr.choose([A, B], {A: 9}).replica for _ in range(4)} == {A, B}
    ll = Policy("least_loaded")
    assert {ll.choose([A, B], {A: 3, B: 1}).replica for _ in range(4)} == {B}
    assert {ll.choose([A, B], {}).replica for _ in range(4)} == {A, B}  # ties in turn


def test_bad_policy_and_no_replica_are_clear_errors():
    with pytest.raises(ValueError, match="one of prefix, least_loaded, round_robin"):
        Policy("random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no replica"):
        Policy().choose([], {})


def test_a_request_without_a_prompt_goes_to_the_least_loaded_and_leaves_no_trace():
    policy = Policy("prefix")
    decision = policy.choose(["a", "b"], {"a": 3, "b": 1}, None)
    assert decision == Decision("b", "no_prompt")
    assert policy.index.size("a") == policy.index.size("b") == 0


def test_deciding_records_nothing_until_the_caller_records_where_it_sent_the_prompt():
    policy = Policy("prefix")
    text = "You are a helpful assistant. " * 40
    blocks = policy.blocks(text)
    first = policy.decide(["a", "b"], {}, blocks)
    assert first.reason == "no_match" and policy.index.size(first.replica) == 0
    policy.record(blocks, "a")
    matched = policy.index.size("a") * BLOCK_CHARS
    assert policy.decide(["a", "b"], {}, blocks) == Decision("a", "matched", matched)


def test_prefixes_that_fill_half_of_each_replicas_cache_keep_their_replica():
    # 8 prefixes of ~3,500 characters (512 tokens of 7 characters: random tokens) over two
    # replicas of 2,688 tokens each; shuffled, eight requests per prefix
    import random

    rng = random.Random(1)
    prefixes = ["".join(rng.choice("abcdefgh ") for _ in range(3500)) for _ in range(8)]
    order = [p for p in range(8) for _ in range(8)]
    rng.shuffle(order)
    policy = Policy("prefix")
    policy.index.set_replicas([A, B])
    for replica in (A, B):
        policy.index.set_capacity(replica, 2688)
    home: dict[int, set[str]] = {}
    for i, p in enumerate(order):
        decision = policy.choose([A, B], {}, prefixes[p] + f" suffix {i} " * 20)
        home.setdefault(p, set()).add(decision.replica)
    assert all(len(replicas) == 1 for replicas in home.values()), home
