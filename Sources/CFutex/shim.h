// Linux futexes on shared memory (syscall(2) is variadic, so Swift cannot call it directly).
#include <stdint.h>
#include <time.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

// Sleeps while *word == expected, for at most `nanoseconds`; wakes on lockstep_futex_wake.
// Returns 0 when woken or the word differed, -1 with errno otherwise (ETIMEDOUT, EINTR, EAGAIN).
static inline int lockstep_futex_wait(const uint32_t *word, uint32_t expected, int64_t nanoseconds) {
#ifdef __linux__
    struct timespec ts = { (time_t)(nanoseconds / 1000000000), (long)(nanoseconds % 1000000000) };
    return (int)syscall(SYS_futex, word, FUTEX_WAIT, expected, &ts, NULL, 0);
#else
    struct timespec ts = { 0, 1000000 };
    (void)word; (void)expected; (void)nanoseconds;
    return nanosleep(&ts, NULL);
#endif
}

// Wakes every process sleeping on `word` (a shared mapping: not FUTEX_PRIVATE).
static inline int lockstep_futex_wake(uint32_t *word) {
#ifdef __linux__
    return (int)syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
#else
    (void)word;
    return 0;
#endif
}
