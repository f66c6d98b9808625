"""What a chat product keeps around the answers, one module per part.

- ``metadata``: a conversation's string map (limits, and the list's ``metadata.KEY=`` filters);
- ``search``: full-text search over titles and message text (PostgreSQL, ranked, per user);
- ``feedback``: a user's rating of an answer;
- ``titles``: the title the server writes after a conversation's first completed answer;
- ``agents``: named presets (``[agents.NAME]``) a conversation takes its defaults from;
- ``prompts``: ``/NAME`` prompt commands, configured and per user;
- ``cache``: the response cache (identical requests answered from a stored answer).

Each part that changes a conversation does it with a domain event (``turnlog.log.events``),
so replay rebuilds it and export shows it.
"""
