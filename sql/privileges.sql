-- pg_webhooks: privileges. Nothing in schema webhooks is for PUBLIC: the
-- management functions change what is sent where, the event log holds row
-- data, and the invocation logs hold headers and responses. Superusers have
-- everything; a DBA grants the rest (see README, "Privileges").
REVOKE ALL ON ALL TABLES IN SCHEMA webhooks FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webhooks FROM PUBLIC;
REVOKE ALL ON SCHEMA webhooks FROM PUBLIC;

SELECT webhooks._warn_if_not_preloaded();
