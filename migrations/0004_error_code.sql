-- Why a failed job failed, as a stable code beside the human-readable `error`.
ALTER TABLE jobs ADD COLUMN error_code TEXT;
