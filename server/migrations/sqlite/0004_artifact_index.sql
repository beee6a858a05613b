-- Artifacts are fetched by their SHA-256 (the registry read API that edge
-- nodes follow, `GET /api/v1/registry/artifacts/{sha256}`).
CREATE INDEX script_versions_artifact_sha256 ON script_versions (artifact_sha256);
