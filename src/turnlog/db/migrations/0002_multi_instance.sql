-- Many instances on one PostgreSQL (docs/deployment.md).
--
-- instances.internal_url: where the instance serves its live streams to the other instances
-- (a follower opens one upstream per message there; see docs/deployment.md). NULL for an
-- instance that does not serve them (then followers read the store instead).
ALTER TABLE instances ADD COLUMN IF NOT EXISTS internal_url text;

-- leases.cancel_requested: a cancel asked through another instance, stored so that the owner
-- acts on it even if the NOTIFY that wakes it is lost (it also polls). It goes with the
-- lease, which the row's final write deletes, so a request never outlives its generation.
ALTER TABLE leases ADD COLUMN IF NOT EXISTS cancel_requested boolean NOT NULL DEFAULT false;
