-- Teams (src/owner.rs): a key's sessions are shared with the agents of its team.
ALTER TABLE api_keys ADD COLUMN team TEXT;
