-- turnlog schema, version 1.
--
-- Applied at every start by turnlog.db.schema: the whole file runs in one transaction
-- holding an advisory lock, so two processes starting together never interleave DDL, and
-- every statement is idempotent. Later changes are numbered migrations in
-- src/turnlog/db/migrations/, recorded in schema_version.

CREATE TABLE IF NOT EXISTS schema_version (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The log: the only source of truth. Rows are inserted, never updated or deleted.
CREATE TABLE IF NOT EXISTS events (
    -- Global position, for scanning the whole log in one order (replay, rebuild). Identity
    -- values are taken at INSERT, not at COMMIT, so a reader following the log by position
    -- could skip a late-committing row; nothing here tails the log by position: rebuild
    -- catches up per conversation by version under a lock (see turnlog.replay).
    position        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id uuid        NOT NULL,
    -- 1, 2, 3, ... within a conversation. Appenders write version = current + 1 while
    -- holding the conversation's projection row lock, so versions have no gaps; this key is
    -- the last line of defence that makes two writers of the same version impossible.
    version         integer     NOT NULL CHECK (version > 0),
    type            text        NOT NULL,
    data            jsonb       NOT NULL,
    -- {"actor": user id or "system", "request_id": ...}: who caused it, never folded.
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_conversation_version UNIQUE (conversation_id, version)
);

-- Projection: conversations. Always the fold of the log (turnlog replay verify).
CREATE TABLE IF NOT EXISTS conversations (
    id            uuid        PRIMARY KEY,
    owner         text        NOT NULL,
    title         text,
    model         text        NOT NULL,
    options       jsonb       NOT NULL,
    system_prompt text,
    state         text        NOT NULL CHECK (state IN ('idle', 'generating', 'awaiting_input')),
    -- The version of the last event folded in. Every append locks this row FOR UPDATE and
    -- checks it, which serialises writers of one conversation (and only of that one).
    version       integer     NOT NULL,
    last_seq      integer     NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL
);
-- Listing is newest first per owner, paged by (created_at, id): id breaks ties so the keyset
-- cursor is total.
CREATE INDEX IF NOT EXISTS conversations_owner_created
    ON conversations (owner, created_at DESC, id DESC);

-- Projection: messages.
CREATE TABLE IF NOT EXISTS messages (
    id                uuid        PRIMARY KEY,
    conversation_id   uuid        NOT NULL,
    -- Canonical order within the conversation, fixed by the event that created the row.
    -- Nothing is ever sorted by a timestamp.
    seq               integer     NOT NULL,
    role              text        NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
    content           text,
    blocks            jsonb       NOT NULL,
    status            text        NOT NULL
        CHECK (status IN ('generating', 'completed', 'interrupted', 'error', 'aborted')),
    -- Derived, so they can never disagree with status.
    is_generating     boolean     GENERATED ALWAYS AS (status = 'generating') STORED,
    interrupted       boolean     GENERATED ALWAYS AS (status = 'interrupted') STORED,
    error             text,
    finish_reason     text,
    usage             jsonb,
    model             text,
    reply_to          uuid,
    tool_call_id      text,
    tool_name         text,
    edited_content    text,
    edited_at         timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    -- Server-only columns.
    attempt           uuid,
    stream_seq        integer     NOT NULL,
    client_message_id text,
    options           jsonb,
    open_tool_calls   text[]      NOT NULL,
    awaiting_user     text[]      NOT NULL,
    CONSTRAINT messages_conversation_seq UNIQUE (conversation_id, seq),
    CONSTRAINT messages_client_id UNIQUE (conversation_id, client_message_id)
);
-- The startup sweep and orphan checks look for generating rows only.
CREATE INDEX IF NOT EXISTS messages_generating ON messages (id) WHERE status = 'generating';

-- Operational state, not projections: which server process runs which generation. Never
-- replayed; an empty table only means "every generating row is an orphan".
--
-- Liveness is PostgreSQL's own: each instance holds the session advisory lock
-- (INSTANCE_LOCK_SPACE, lock_key) on a connection it keeps open for its whole life. When the
-- process dies, the server drops that connection and the lock with it, at once; a paused
-- but living process keeps it. So "is the owner of this lease alive?" is "is its lock held?"
-- (pg_locks), with no heartbeat interval to wait out and no clock to trust.
CREATE TABLE IF NOT EXISTS instances (
    id         uuid        PRIMARY KEY,
    lock_key   integer     NOT NULL UNIQUE CHECK (lock_key > 0),
    started_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS leases (
    message_id  uuid PRIMARY KEY,
    attempt     uuid NOT NULL,
    instance_id uuid NOT NULL
);

-- Operational: accepted sends, for the per-user sends-per-minute limit (src/turnlog/limits.py).
-- Only the last minute matters; each admission deletes its user's older rows under the
-- user's lock, so the table stays about (users x limit) rows. Never replayed.
CREATE TABLE IF NOT EXISTS sends (
    owner text        NOT NULL,
    at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS sends_owner_at ON sends (owner, at);
-- The concurrent-generations limit counts a user's generating conversations.
CREATE INDEX IF NOT EXISTS conversations_generating
    ON conversations (owner) WHERE state = 'generating';

INSERT INTO schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;
