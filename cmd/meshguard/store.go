package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/meshguard/meshguard/flowmodel/store"
	"github.com/spf13/cobra"
)

const storeLong = `Check, back up and restore meshguard's baseline store (<data-dir>/meshguard.db).

  meshguard store check   [--data-dir DIR | --file FILE]   read the whole file and every record
  meshguard store backup  [--data-dir DIR] DEST            write a checked, consistent copy to DEST
  meshguard store restore [--data-dir DIR] BACKUP          replace the store with a checked backup

A damaged store is refused at start with an error naming the file and this command. check and
backup need the file unlocked: while "meshguard serve" runs, back it up through its admin API
(POST /v1/backup, admin role) or read the scheduled backups in <data-dir>/backups
(--backup-interval). restore keeps the file it replaces beside it (meshguard.db.before-restore-*)
and refuses while a meshguard holds the store: stop it first.`

// newStoreCommand is "meshguard store check|backup|restore".
func newStoreCommand(e *env) *cobra.Command {
	group := newGroupCommand("store", "check, back up and restore the baseline store", "check, backup, restore")
	group.Long = storeLong
	var dataDir, file string
	path := func() string {
		if file != "" {
			return file
		}
		return filepath.Join(dataDir, store.FileName)
	}
	report := func(c *cobra.Command, verb string, r store.Report) {
		fmt.Fprintf(c.OutOrStdout(), "%s %s: %d bytes, %d services, %d audit records, %d tokens\n",
			verb, r.Path, r.Bytes, r.Services, r.Audit, r.Tokens)
	}
	hint := func(err error) error {
		if errors.Is(err, store.ErrLocked) {
			return fmt.Errorf("%w (a running meshguard holds it: back it up with POST /v1/backup on its admin API, or stop it)", err)
		}
		return err
	}
	check := &cobra.Command{
		Use:   "check [--data-dir DIR | --file FILE]",
		Short: "check the store file through: format, every page, every record",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			r, err := store.Check(path())
			if err != nil {
				return hint(err)
			}
			report(c, "ok", r)
			return nil
		},
	}
	check.Flags().StringVar(&file, "file", "", "the store file to check (default <data-dir>/meshguard.db); a backup, say")
	backup := &cobra.Command{
		Use:   "backup [--data-dir DIR] DEST",
		Short: "write a checked, consistent copy of the store to DEST",
		Args:  rangeArgs(1, 1, "the file to write (DEST)"),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := store.Backup(path(), args[0])
			if err != nil {
				return hint(err)
			}
			report(c, "backed up to", r)
			return nil
		},
	}
	restore := &cobra.Command{
		Use:   "restore [--data-dir DIR] BACKUP",
		Short: "replace the store with BACKUP, after checking it; the replaced file is kept beside it",
		Args:  rangeArgs(1, 1, "the backup to restore (BACKUP)"),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := store.Restore(args[0], path())
			if err != nil {
				return hint(err)
			}
			report(c, "restored", r)
			return nil
		},
	}
	for _, c := range []*cobra.Command{check, backup, restore} {
		c.Flags().StringVar(&dataDir, "data-dir", "./meshguard-data", "directory of the baseline store")
		group.AddCommand(c)
	}
	return group
}
