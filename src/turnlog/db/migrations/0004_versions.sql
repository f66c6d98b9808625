-- Versions: every message row has a parent; a conversation shows one path (docs/protocol.md).
--
-- messages.parent_id: the row this one follows (NULL for a first row). Rows sharing a parent
-- are versions of each other. Set when the row is created, never changed, and always an
-- earlier row (a smaller seq), so no route can make a cycle.
ALTER TABLE messages ADD COLUMN IF NOT EXISTS parent_id uuid;

-- conversations.active_leaf_id: where the active path ends (public); leaf_seq its seq.
-- conversations.last_id: the row with seq = last_seq (the parent of a row that simply
-- follows the one before it: a tool result, a turn's next step).
-- conversations.tree: the parent seq of every row, by seq (tree[s] = parent of row s, 0 for
-- a first row): a few bytes a row, and enough for the projection to number versions and
-- tell whether a row is on the active path without reading the rows (the fold stays pure
-- and the hot path reads nothing more).
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS active_leaf_id uuid;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS leaf_seq integer NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS last_id uuid;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS tree integer[] NOT NULL DEFAULT '{}';

-- Existing conversations become a single path: each row's parent is the row before it, and
-- the active path ends at the last row. Seqs are dense (1, 2, 3, ...: the projection's
-- check), so "the row before" is seq - 1. This is exactly what replaying their events gives
-- (an event written before versions names no parent; see log/projection.py), so
-- `turnlog replay verify` agrees with the migrated rows.
UPDATE messages m SET parent_id = p.id
    FROM messages p
    WHERE p.conversation_id = m.conversation_id AND p.seq = m.seq - 1 AND m.parent_id IS NULL;
UPDATE conversations c SET active_leaf_id = l.id, last_id = l.id, leaf_seq = c.last_seq,
    tree = (SELECT array_agg(s.seq - 1 ORDER BY s.seq) FROM messages s
            WHERE s.conversation_id = c.id)
    FROM messages l
    WHERE l.conversation_id = c.id AND l.seq = c.last_seq AND c.active_leaf_id IS NULL;
