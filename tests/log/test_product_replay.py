"""Replay rebuilds what a chat product keeps: metadata, titles, feedback and prompt commands.

The store's state machine (test_store_machine) with more rules: every step is followed by
its invariants, so the projection must stay the fold of the log and equal what
``replay rebuild`` writes, with these events among the others.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import precondition, rule, run_state_machine_as_test

from tests.strategies import metadata_maps, product_texts, prompt_commands
from turnlog.db.schema import apply_schema
from turnlog.errors import InvalidEvent
from turnlog.log import events as ev

from .test_store_machine import StoreMachine


class ProductMachine(StoreMachine):
    @rule(data=st.data())
    def create_with_metadata(self, data: st.DataObject) -> None:
        cid = self.new_id()
        event = ev.ConversationCreated(
            at=self.now(),
            conversation_id=cid,
            owner="alice",
            title=data.draw(st.none() | product_texts),
            model="demo:default",
            options={},
            system_prompt=None,
            metadata=data.draw(metadata_maps()),
            agent=data.draw(st.none() | st.just("helper")),
        )
        self.append(cid, [event])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def change_metadata(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.live()))
        event = ev.ConversationUpdated(
            at=self.now(),
            metadata=data.draw(metadata_maps()),
            agent=data.draw(st.none() | st.just("other") | st.just(ev.UNSET)),
        )
        self.append(cid, [event])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def auto_title(self, data: st.DataObject) -> None:
        """The server's title lands only on an untitled conversation."""
        cid = data.draw(st.sampled_from(self.live()))
        event = ev.TitleGenerated(at=self.now(), title=data.draw(product_texts))
        if self.conversation(cid).conversation.title is None:
            self.append(cid, [event])
        else:
            self.append_fails(cid, [event], InvalidEvent, expected_version=self.versions[cid])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def feedback(self, data: st.DataObject) -> None:
        """Feedback lands on assistant rows only (and may clear itself)."""
        cid = data.draw(st.sampled_from(self.live()))
        rows = self.messages(cid)
        if not rows:
            return
        row = data.draw(st.sampled_from(rows))
        event = ev.FeedbackGiven(
            at=self.now(),
            message_id=row.message.id,
            rating=data.draw(st.sampled_from(["up", "down", None])),
            comment=data.draw(st.none() | product_texts),
        )
        if row.message.role == "assistant":
            self.append(cid, [event])
        else:
            self.append_fails(cid, [event], InvalidEvent, expected_version=self.versions[cid])

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def send_command(self, data: st.DataObject) -> None:
        """A `/NAME input` message keeps what was typed, the command and its expansion."""
        cid = data.draw(st.sampled_from(self.live()))
        conv = self.conversation(cid)
        if conv.conversation.state != "idle":
            return
        name, typed = data.draw(prompt_commands())
        seq = conv.last_seq + 1
        user = ev.UserMessageSent(
            at=self.now(),
            message_id=self.new_id(),
            seq=seq,
            content=f"/{name} {typed}",
            command=ev.Command(name=name, input=typed),
            prompt=f"Expanded: {typed}",
        )
        self.append(cid, [user, self.start_turn(cid, seq + 1, user.message_id)])


def test_replay_rebuilds_metadata_titles_feedback_and_commands(fresh_db: str) -> None:
    """With the product's events in the log, the projection is the fold and the rebuild."""
    apply_schema(fresh_db)
    machine = type("Machine", (ProductMachine,), {"url": fresh_db})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
