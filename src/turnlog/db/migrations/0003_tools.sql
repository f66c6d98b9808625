-- Tools (docs/tools.md).
--
-- conversations.tools: the tool names or globs its model may call, a JSON array of strings;
-- NULL: none named (the agent's, else the configured [tools] default, resolved at each step).
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS tools jsonb;
