"""ClickHouse as the trace store: the shared, column-oriented database of many sidecars.

``connection`` opens the native protocol (clickhouse-driver) and words its errors;
``schema`` is the one definition of the table (single server or a Distributed table
over shards); ``writer`` is the store the batch writer drives; ``reader`` answers the
views; ``retention`` maps ``siptrace purge`` onto dropped day partitions.
docs/storage.md ("ClickHouse") gives the design, docs/scaling.md the sizing.
"""
