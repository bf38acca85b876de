-- Version 4: the fence as a function that fails, so that a batch can send
-- its fence, its statements and its COMMIT in one flight without waiting
-- for the fence's answer: when another replica has taken the partition
-- over, the fence raises, the transaction is aborted, and the COMMIT that
-- follows it rolls back. It reads the lease row FOR SHARE, so a takeover
-- (which updates the row) waits for the batch or comes before it.
CREATE FUNCTION dispatch_fence(p_partition text, p_epoch bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    current_epoch bigint;
BEGIN
    SELECT epoch INTO current_epoch FROM leases WHERE partition = p_partition FOR SHARE;
    IF current_epoch IS DISTINCT FROM p_epoch THEN
        RAISE EXCEPTION USING
            ERRCODE = 'P0001',
            MESSAGE = 'dispatch fence: partition ' || p_partition || ' is at epoch '
                || coalesce(current_epoch::text, 'none') || ', not ' || p_epoch,
            HINT = 'another replica leads';
    END IF;
    RETURN current_epoch;
END
$$;
