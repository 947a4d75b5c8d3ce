"""The command line: every parser of every pgcloud command, and nothing else imports argparse.

    backup.py    pgcloud-backup (python -m airflow_provider_pgcloud.runner): barman-cloud-backup's
                 options, in its archive, snapshot and Barman hook-script modes
    verify.py    pgcloud-verify: check a stored backup against its manifest
    cleanup.py   pgcloud-cleanup: remove what dead runs left in the store
    restore.py   pgcloud-restore: restore a backup into a directory
    drill.py     pgcloud-drill: restore a backup, start it, check it, remove it
    backup_delete.py  pgcloud-backup-delete: retention policies and deleting backups
    backup_keep.py    pgcloud-backup-keep: keep annotations, as barman-cloud-backup-keep
    wal_restore.py  pgcloud-wal-restore: fetch one archived WAL file (a restore_command)
    keeper.py    the backup-session keeper an Airflow task starts (internal)
    snapshots.py barman-cloud-backup's snapshot options
    common.py    what they share: argument types, verbosity, exit codes, and the store and
                 PostgreSQL options, declared once

Each command turns its arguments into the engine's dataclasses (StoreConfig, BackupOptions,
SnapshotConfig) and calls engine functions with them.
"""
