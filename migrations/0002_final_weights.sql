-- The model a job ended with (after early stopping restored its best weights, if it did): not
-- always any kept checkpoint, so it gets its own file and columns.
ALTER TABLE jobs ADD COLUMN final_weights_path TEXT;
ALTER TABLE jobs ADD COLUMN final_weights_size INTEGER;
ALTER TABLE jobs ADD COLUMN final_weights_sha256 TEXT;
