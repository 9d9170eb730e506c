-- Mutual TLS for processor clients: a key may be bound to the SHA-256 of a client
-- certificate's DER (src/api/auth.rs). One certificate names at most one key.
ALTER TABLE api_keys ADD COLUMN client_cert_sha256 TEXT;
CREATE UNIQUE INDEX api_keys_client_cert ON api_keys (client_cert_sha256) WHERE client_cert_sha256 IS NOT NULL;
