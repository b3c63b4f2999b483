"""Persistence and the job queue: the SQLite database, the blob store and the huey queue.

- ``storage.db.Database``: typed accessors over the one SQLite file (only this package writes SQL).
- ``storage.blobs.BlobStore``: content-addressed files, in a folder or at any fsspec URL.
- ``storage.settings.Settings``: ``LORACORD_*`` settings (data dir, queue URL, limits).
- ``storage.queue``: huey (SQLite or Redis) and the dispatcher; ``storage.worker``: the consumer and its task.
- ``storage.jobkinds``: the job kinds (train, tune, sample, sleep), one module each, registered in one table.
- ``storage.collector.JobCollector``: the bot-side ingestion of worker reports into the database.
"""
