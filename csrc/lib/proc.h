/* Facts about a task that only /proc tells: its /proc/<tid>/status fields. */
#ifndef KBOX_LIB_PROC_H
#define KBOX_LIB_PROC_H

/* The number after `field` ("Tgid:", "PPid:", "Umask:", "CapEff:") in /proc/<tid>/status, read in
 * `base`; 0, -ENOENT if the field is missing, or -errno. */
long kbox_proc_status_field(int tid, const char *field, int base, long *out);

#endif
