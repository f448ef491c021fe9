-- Uploaded pretrained weights (the backbone registry). A file is checked against its
-- architecture at upload time, so a job that names it can rely on it fitting.
CREATE TABLE backbones (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    architecture TEXT NOT NULL,
    -- Width multiplier (MobileNetV2); NULL where the architecture has none.
    alpha        REAL,
    -- `keras`, `torchvision` or `tanuki` (our own checkpoint names).
    format       TEXT NOT NULL,
    path         TEXT NOT NULL,
    size_bytes   INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    -- Tensors in the file and how many of them the backbone takes.
    tensors      INTEGER NOT NULL,
    params       INTEGER NOT NULL,
    created_at   TEXT NOT NULL
);

-- The class names a job trains on, fixed when it is submitted: predictions name them even after
-- the dataset is deleted.
ALTER TABLE jobs ADD COLUMN classes TEXT;
