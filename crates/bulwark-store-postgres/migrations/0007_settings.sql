-- The runtime security policy (password rules, two-factor enforcement, trusted devices,
-- session timeouts, lockout thresholds): seeded from the configuration file at the first
-- start, then changed through the admin console, the API and `bulwark policy set`, each
-- change audited. One row per dotted setting name; the value is JSON.

CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
