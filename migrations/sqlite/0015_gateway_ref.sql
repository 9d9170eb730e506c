-- The processor gateway's own reference for a card tonewall pushed to it (src/push.rs),
-- beside tonewall's token. Never card data: checked before it is stored.
ALTER TABLE cards ADD COLUMN gateway_ref TEXT;
