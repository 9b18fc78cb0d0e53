"""Credentials that heal: one item's 190, suspension and checks with back-off, rotated token and secret files."""

from __future__ import annotations

import asyncio
import logging

from exporter.collect.credentials import Credentials
from exporter.collect.scheduler import Scheduler
from exporter.config.settings import Secrets, resolve_secrets, validate
from exporter.exposition.publisher import render
from exporter.graph import GraphError
from tests.conftest import TOKEN, SteppedClock, run_cycle, until


def config_for(sim, datasets, credentials=None, graph_api=None, **collection):
    raw = {
        "graph_api": {"base_url": sim.url, "timeout": "5s", "max_retries": 0, **(graph_api or {})},
        "collection": {"interval": "1h", **collection},
        "datasets": [{"id": i} for i in datasets],
    }
    if credentials:
        raw["credentials"] = credentials
    return validate(raw, "test.yaml")


def all_ok(snapshot):
    return bool(snapshot.datasets) and all(s.fetch_success for s in snapshot.datasets)


def test_one_items_190_fails_that_dataset_only_and_never_its_credential(start_simulator):
    """Meta accepted the batch's token: whatever one item's 190 means, it cannot mean the token is dead. It
    used to mark the credential rejected until a reload, and every later cycle failed all its datasets."""
    sim = start_simulator(datasets=20)
    ids = sim.world.dataset_ids[:20]
    sim.set_fault(ids[3], "token_invalid")  # 190/467 for this item alone
    scheduler = Scheduler(config_for(sim, ids), Secrets({"default": TOKEN}))
    first = {s.target.dataset_id: s for s in run_cycle(scheduler).datasets}
    assert [i for i in ids if not first[i].fetch_success] == [ids[3]] and first[ids[3]].last_reason == "auth"
    assert not scheduler.credentials.suspended and not scheduler.snapshot.suspended
    sim.set_fault(ids[3], None)
    assert all_ok(run_cycle(scheduler))


def run_with(scheduler, scenario):
    """Run `scheduler` on its loop while `scenario()` (a coroutine function) acts; what the scenario returns."""

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        try:
            return await scenario()
        finally:
            stop.set()
            await task

    return asyncio.run(go())


def token_checks(sim):
    return [r for r in sim.requests if r.startswith("GET /v27.0/me?")]


def test_a_suspended_credential_is_checked_with_back_off_and_resumes_by_itself(start_simulator, caplog):
    sim = start_simulator(datasets=6, expired_tokens=(TOKEN,))
    ids = sim.world.dataset_ids[:6]
    clock = SteppedClock()
    scheduler = Scheduler(config_for(sim, ids, interval="5m"), Secrets({"default": TOKEN}), clock=clock)

    async def scenario():
        await until(lambda: scheduler.snapshot.suspended and scheduler.snapshot.cycles)
        suspended, calls = scheduler.snapshot, sim.calls
        assert not token_checks(sim)  # the first check waits a minute
        backoff = lambda: scheduler.credentials.suspended["default"].backoff  # noqa: E731
        clock.advance(61)
        await until(lambda: backoff() == 120, what="the check after a minute, refused")
        assert len(token_checks(sim)) == 1
        clock.advance(61)  # the next one waits two minutes
        await asyncio.sleep(0.3)
        assert len(token_checks(sim)) == 1
        clock.advance(60)
        await until(lambda: backoff() == 240, what="the check after two minutes, refused")
        assert len(token_checks(sim)) == 2
        assert sim.calls == calls + 2  # nothing but checks while it is suspended
        with sim.lock:
            sim.expired_tokens.discard(TOKEN)  # the user renewed the token's session
        clock.advance(240)  # the third check, after four minutes
        await until(lambda: not scheduler.credentials.suspended, what="the credential resumed")
        clock.advance(300)
        await until(lambda: all_ok(scheduler.snapshot), what="the datasets fetched again")
        return suspended, scheduler.snapshot

    with caplog.at_level(logging.INFO):
        suspended, healed = run_with(scheduler, scenario)
    assert dict(suspended.suspended) == {"default": "expired"}
    assert {s.last_reason for s in suspended.datasets} == {"auth"}
    exposition = render(suspended).decode()
    assert 'meta_dataset_quality_credential_suspended{credential="default",reason="expired"} 1.0' in exposition
    said = [r.getMessage() for r in caplog.records if "is suspended" in r.getMessage()]
    assert len(said) == 1 and "generate a new one" in said[0]  # once, with what a person must do
    assert not healed.suspended and "credential_suspended{" not in render(healed).decode()
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_a_token_file_replaced_while_running_takes_effect_within_a_cycle_without_a_reload(start_simulator, tmp_path):
    sim = start_simulator(datasets=6)
    ids = sim.world.dataset_ids[:6]
    token_file = tmp_path / "token"
    token_file.write_text("dead-token-0123456789\n")
    config = config_for(sim, ids, credentials={"default": {"token_file": str(token_file)}}, interval="5m")
    clock = SteppedClock()
    scheduler = Scheduler(config, resolve_secrets(config), clock=clock)

    async def scenario():
        await until(lambda: scheduler.snapshot.suspended)
        assert dict(scheduler.snapshot.suspended) == {"default": "invalid"}
        replaced_at = scheduler.snapshot.cycles
        token_file.write_text(TOKEN + "\n")  # a Kubernetes secret rotation, a Vault agent
        # checked at once, not after the minute of back-off
        await until(lambda: not scheduler.credentials.suspended, what="the new token checked")
        clock.advance(300)
        await until(lambda: all_ok(scheduler.snapshot), what="the datasets fetched with the new token")
        return scheduler.snapshot.cycles - replaced_at

    assert run_with(scheduler, scenario) == 1


def test_a_rotated_app_secret_file_is_used_without_a_reload(start_simulator, tmp_path):
    sim = start_simulator(datasets=4, app_secret="the-new-app-secret", require_proof=True)
    ids = sim.world.dataset_ids[:4]
    secret_file = tmp_path / "app_secret"
    secret_file.write_text("the-old-app-secret")
    graph_api = {"app_id": sim.settings.app_id, "app_secret_file": str(secret_file)}
    config = config_for(sim, ids, graph_api=graph_api, interval="5m")
    clock = SteppedClock()
    scheduler = Scheduler(config, Secrets({"default": TOKEN}, "the-old-app-secret"), clock=clock)

    async def scenario():
        await until(lambda: scheduler.snapshot.cycles)
        assert not any(s.fetch_success for s in scheduler.snapshot.datasets)  # Meta refuses the old proof
        secret_file.write_text("the-new-app-secret\n")
        clock.advance(300)
        await until(lambda: all_ok(scheduler.snapshot), what="the datasets fetched with the new proof")

    run_with(scheduler, scenario)


def test_subcodes_say_what_a_person_must_do():
    credentials = Credentials(validate({}, "test.yaml"), Secrets({"default": TOKEN}))
    for subcode, reason in ((463, "expired"), (467, "invalid"), (460, "invalid"), (458, "invalid"),
                            (493, "invalid"), (459, "user_action"), (464, "user_action"), (492, "user_action"),
                            (None, "rejected")):  # fmt: skip
        credentials.suspend("default", GraphError("auth", "refused", code=190, subcode=subcode))
        assert credentials.suspended["default"].reason == reason


def test_checks_back_off_from_a_minute_doubling_up_to_one_interval():
    now = [1000.0]
    config = validate({"collection": {"interval": "5m"}}, "test.yaml")
    credentials = Credentials(config, Secrets({"default": TOKEN}), clock=lambda: now[0])
    refused = GraphError("auth", "refused", code=190, subcode=463)
    credentials.suspend("default", refused)
    waits = []
    for _ in range(5):
        due = credentials.next_check()
        assert due is not None and credentials.due() == [] and due > now[0]
        waits.append(due - now[0])
        now[0] = due
        assert credentials.due() == ["default"]
        credentials.checked("default", refused)
    assert waits == [60, 120, 240, 300, 300]
    credentials.checked("default", None)
    assert not credentials.suspended and credentials.usable() == {"default": TOKEN}
