/*
 * guest.h: what both test programs need on QEMU's "virt" board: memset for the compiler,
 * a polled PL011 console, a PSCI call through the conduit the device tree names, and the
 * few string helpers a flattened-device-tree walk uses. Each program sets `uart` and
 * `psci_smc` from its device tree before it relies on them.
 */

#include <stdint.h>

/* The console (QEMU virt's PL011 until the device tree says otherwise). */
static volatile uint32_t *uart = (volatile uint32_t *)0x09000000;
/* PSCI's conduit: 0 = HVC, 1 = SMC (the /psci node's "method"). */
static int psci_smc;

/* The compiler may call memset for zero-initialised structures. */
void *memset(void *dst, int c, unsigned long n)
{
    unsigned char *d = dst;
    while (n--)
        *d++ = (unsigned char)c;
    return dst;
}

static void putc_(char c)
{
    while (uart[0x18 / 4] & (1u << 5))      /* FR.TXFF */
        ;
    uart[0] = (uint32_t)c;
}

static void puts_(const char *s)
{
    while (*s)
        putc_(*s++);
}

static void putdec(uint64_t v)
{
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    puts_(&buf[i]);
}

static int64_t psci(uint64_t fn, uint64_t a1, uint64_t a2, uint64_t a3)
{
    register uint64_t x0 asm("x0") = fn;
    register uint64_t x1 asm("x1") = a1;
    register uint64_t x2 asm("x2") = a2;
    register uint64_t x3 asm("x3") = a3;
    if (psci_smc)
        asm volatile("smc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3) : : "memory");
    else
        asm volatile("hvc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3) : : "memory");
    return (int64_t)x0;
}

static uint32_t be32(const void *p)
{
    const uint8_t *b = p;
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

/* True if the NUL-separated list [list, list+len) contains str. */
static int list_has(const char *list, uint32_t len, const char *str)
{
    uint32_t i = 0;
    while (i < len) {
        if (streq(list + i, str))
            return 1;
        while (i < len && list[i])
            i++;
        i++;
    }
    return 0;
}
