-- Uploaded prompts per merchant (src/runtime/prompts.rs): `default`'s play on every
-- merchant's calls; another merchant's own play on its calls only, over `default`'s.
ALTER TABLE prompts ADD COLUMN merchant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE prompts DROP CONSTRAINT prompts_pkey;
ALTER TABLE prompts ADD PRIMARY KEY (merchant, language, name);
