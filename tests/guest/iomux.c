/* Readiness: poll, ppoll, select, pselect6 and epoll (level and edge triggered) over pipes,
 * eventfd and timerfd; timeouts return 0 without events. */
#include "guest.h"
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/timerfd.h>
#include <time.h>

int main(void)
{
    guest_init();
    int p[2];
    CHECK(pipe(p) == 0);
    struct pollfd pfd[2] = {{.fd = p[0], .events = POLLIN}, {.fd = p[1], .events = POLLOUT}};
    int n = poll(pfd, 2, 0);
    printf("poll: %d ready, read end %s, write end POLLOUT %s\n", n, yesno(pfd[0].revents & POLLIN), yesno(pfd[1].revents & POLLOUT));
    printf("poll timeout on an empty pipe: %d\n", poll(pfd, 1, 20));
    CHECK(write(p[1], "x", 1) == 1);
    struct timespec ts = {0, 0};
    sigset_t mask;
    sigemptyset(&mask);
    n = ppoll(pfd, 1, &ts, &mask);
    printf("ppoll after write: %d, POLLIN %s\n", n, yesno(pfd[0].revents & POLLIN));

    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    struct timeval tv = {0, 0};
    n = select(p[0] + 1, &rd, NULL, NULL, &tv);
    printf("select: %d, readable %s\n", n, yesno(FD_ISSET(p[0], &rd)));
    char c;
    CHECK(read(p[0], &c, 1) == 1);
    FD_ZERO(&rd);
    FD_SET(p[0], &rd);
    ts.tv_nsec = 20 * 1000 * 1000;
    printf("pselect timeout: %d\n", pselect(p[0] + 1, &rd, NULL, NULL, &ts, &mask));

    int ep = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ep >= 0);
    int ev = eventfd(0, EFD_NONBLOCK);
    CHECK(ev >= 0);
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = 1};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e) == 0);
    e.events = EPOLLIN | EPOLLET;
    e.data.u32 = 2;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) == 0);
    struct epoll_event out[4];
    printf("epoll_wait with nothing ready: %d\n", epoll_wait(ep, out, 4, 10));
    CHECK(write(p[1], "y", 1) == 1);
    uint64_t one = 1;
    CHECK(write(ev, &one, 8) == 8);
    n = epoll_wait(ep, out, 4, 1000);
    unsigned seen = 0;
    for (int i = 0; i < n; i++)
        seen |= out[i].data.u32;
    printf("epoll_wait: %d events, pipe %s, eventfd %s\n", n, yesno(seen & 1), yesno(seen & 2));
    /* Level triggered reports the pipe again; edge triggered does not repeat the eventfd. */
    n = epoll_wait(ep, out, 4, 0);
    printf("epoll_wait again: %d event, data %u\n", n, n == 1 ? out[0].data.u32 : 0);
    uint64_t val;
    CHECK(read(ev, &val, 8) == 8);
    printf("eventfd counter: %llu\n", (unsigned long long)val);
    SHOW("epoll_ctl add twice", epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e));

    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    CHECK(tfd >= 0);
    struct itimerspec its = {.it_value = {0, 30 * 1000 * 1000}};
    CHECK(timerfd_settime(tfd, 0, &its, NULL) == 0);
    e.events = EPOLLIN;
    e.data.u32 = 4;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &e) == 0);
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL) == 0);
    n = epoll_wait(ep, out, 4, 5000);
    printf("timerfd fired through epoll: %d, data %u\n", n, n == 1 ? out[0].data.u32 : 0);
    CHECK(read(tfd, &val, 8) == 8);
    printf("timerfd expirations: %llu\n", (unsigned long long)val);
    return 0;
}
