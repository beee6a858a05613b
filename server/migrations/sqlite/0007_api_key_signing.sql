-- Request signing (issue 19): a key created with `avap apikey create
-- --signed` has a signing secret, which its requests are HMAC-signed with.
-- The secret is kept sealed (XChaCha20-Poly1305 under the server-side key
-- `<data-dir>/keys/api_key_secrets.key`, bound to the key's id), never in
-- the clear: `v1.<secrets key id>.<base64 nonce + ciphertext>`. NULL: a key
-- without request signing (every key made before this migration).

ALTER TABLE api_keys ADD COLUMN signing_secret TEXT;
