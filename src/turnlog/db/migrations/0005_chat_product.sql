-- What a chat product stores around the answers: metadata, agents, feedback,
-- prompt commands, full-text search, and two operational tables (users' prompts and the
-- response cache).

-- Projection columns (folded from the log like the others; see turnlog.log.projection).
-- conversations.metadata: at most 16 string keys to string values (checked by the command).
-- No index of its own: `metadata.KEY=` filters always go with the owner, and one user's
-- conversations are read through conversations_owner_created; a GIN index here would be
-- rewritten by every append (each one updates the conversation row).
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS metadata jsonb NOT NULL DEFAULT '{}'::jsonb;
-- conversations.agent: the preset ([agents.NAME]) whose fields are this conversation's
-- defaults; resolved at each turn, so a changed agent applies to the next one.
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS agent text;
-- messages.feedback: {"rating": "up"|"down", "comment": ..., "at": ...} or NULL.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS feedback jsonb;
-- messages.command: {"name", "input"} of a user row typed as `/NAME input`; messages.prompt
-- (server-only): the expanded template the model was sent instead of `content`, stored so
-- that a later edit of the prompt never changes what an old turn said.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS command jsonb;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS prompt text;

-- Full-text search over message text (a user's content, or its edit; an assistant's text
-- blocks), kept by PostgreSQL itself with every projection write: a generated column needs
-- no code on the write path and is rebuilt with the table by `turnlog replay rebuild`
-- (CREATE TABLE ... LIKE ... INCLUDING ALL). 'simple' (no stemming): conversations are in
-- any language, and a word is found as it was written.
-- A generating row stays NULL until it ends: checkpoints rewrite the row every second while
-- it streams, and an unchanged NULL keeps those updates HOT (no index entry per checkpoint).
ALTER TABLE messages ADD COLUMN IF NOT EXISTS search tsvector GENERATED ALWAYS AS (
    CASE
        WHEN status = 'generating' THEN NULL
        WHEN role = 'user' THEN to_tsvector('simple'::regconfig, coalesce(edited_content, content, ''))
        WHEN role = 'assistant' THEN jsonb_to_tsvector(
            'simple'::regconfig,
            jsonb_path_query_array(blocks, '$[*] ? (@.type == "text").text'),
            '["string"]'::jsonb
        )
    END
) STORED;
CREATE INDEX IF NOT EXISTS messages_search ON messages USING gin (search);

-- Operational, never replayed: each user's own prompt commands.
-- What a send expanded is stored in its row (messages.prompt), so replay never needs these.
CREATE TABLE IF NOT EXISTS prompts (
    owner       text        NOT NULL,
    name        text        NOT NULL CHECK (name ~ '^[a-z0-9_-]{1,32}$'),
    description text,
    template    text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (owner, name)
);

-- Operational, never replayed: the response cache. A hit is written
-- to the log as ordinary turn events, so the log alone still rebuilds every row.
-- key: sha256 over everything that shapes the answer plus the user (or "shared").
CREATE TABLE IF NOT EXISTS response_cache (
    key         bytea       PRIMARY KEY,
    model       text        NOT NULL,
    events      jsonb       NOT NULL,  -- the answer's stream events, coalesced
    finish_reason text,
    usage       jsonb,
    tokens      integer     NOT NULL,  -- output tokens a hit saves
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
-- Expiry and the size bound delete the oldest first.
CREATE INDEX IF NOT EXISTS response_cache_expires ON response_cache (expires_at);
