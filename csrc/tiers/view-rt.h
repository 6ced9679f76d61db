/* The root filesystem view in the in-process tiers (view-rt.c; the view itself: core/view.h). */
#ifndef KBOX_TIERS_VIEW_RT_H
#define KBOX_TIERS_VIEW_RT_H

#include "core/request.h"
#include "core/view.h"
#include "tiers/view-sock.h"
#include <stdbool.h>

/* One call's translated paths, alive until the call has run (on the kbox stack). */
struct kbox_view_call {
    char path[2][KBOX_VIEW_PATH_MAX];
    int tmpfd[2];
    struct kbox_view_sock sock;  /* socket calls: an AF_UNIX address (view-sock.c) */
    bool active;
};

/* Whether `nr` takes or returns a path the view must translate. */
bool kbox_view_touches(int nr);

/* Before a call of the program runs: points its path arguments (ans->args) at host paths
 * inside the view, or serves it here (the open family, a path that cannot be read or
 * resolved).  Returns true if served (result in *ret). */
bool kbox_view_enter(const struct kbox_req *req, struct kbox_answer *ans, struct kbox_view_call *vc,
                     int64_t *ret);

/* After it ran (or was served): releases what enter opened and turns host paths in its
 * results (getcwd, readlink of /proc links) back into guest paths. */
void kbox_view_leave(const struct kbox_req *req, const struct kbox_answer *ans,
                     struct kbox_view_call *vc, int64_t *ret);

#endif
