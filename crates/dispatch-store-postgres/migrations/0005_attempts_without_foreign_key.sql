-- Version 5: attempts without a foreign key to their task. The key's check
-- ran a lookup and a row lock of the task for every attempt stored (about
-- four times the cost of the row itself), on the hottest path: one attempt
-- per finished task. Nothing else writes attempts than the statement that
-- updates their task, and the purge now deletes a task's attempts itself.
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_task_id_fkey;
