/*
 * gic_test.c: interrupts on QEMU's "virt" board, GICv2 or GICv3 (from the device tree),
 * run unmodified by emu. Only the boot CPU prints, and only outcomes, never times, so the
 * console is the same on emu and on QEMU (tests/test_c_firmware.py compares them).
 *
 *   timer       the virtual timer's PPI 27 is taken, after its deadline, by a WFI loop
 *   wfi         WFI with IRQs masked returns on a pending interrupt, taken once unmasked
 *   level       a level PPI is taken again while its source stays asserted
 *   edge        an edge SPI made pending once is taken once
 *   active      an SPI is active in its handler; pended again, it waits for the EOI
 *   preemption  a higher-priority SPI preempts a handler, a lower one waits
 *   sgi         SGI 1 passed from CPU to CPU, three laps through all of them
 *
 * Then every secondary turns itself off (SGI 2 -> CPU_OFF) and the boot CPU SYSTEM_OFFs.
 * Build: make -C firmware/c (gcc-aarch64-linux-gnu).
 */

#include "guest.h"

#define PSCI_CPU_OFF         0x84000002u
#define PSCI_CPU_ON64        0xc4000003u
#define PSCI_AFFINITY_INFO64 0xc4000004u
#define PSCI_SYSTEM_OFF      0x84000008u
#define MAX_CPUS 8

#define GICD     0x08000000ul
#define GICC     0x08010000ul
#define GICR     0x080a0000ul
#define GICR_SGI 0x10000ul

#define PPI_VTIMER 27
#define SGI_PASS   1
#define SGI_OFF    2
#define SPI_ACTIVE 40
#define SPI_EDGE   41
#define SPI_LOW    42
#define SPI_HIGH   43
#define SPI_LOWER  44

extern void secondary_entry(void);

static int v3, ncpus;
static volatile int online[MAX_CPUS];
static volatile int ticks, level_hits, edge_hits, active_hits, active_seen, laps;
static volatile int order[8], norder;
static volatile uint64_t deadline, late;

/* ---- device tree: GIC version, CPU count, PSCI conduit -------------------------------- */

static void parse_fdt(const uint8_t *fdt)
{
    const uint8_t *p = fdt + be32(fdt + 8);
    const char *strings = (const char *)fdt + be32(fdt + 12);
    for (;;) {
        uint32_t token = be32(p);
        p += 4;
        if (token == 1) {
            const char *name = (const char *)p;
            uint32_t n = 0;
            while (name[n])
                n++;
            if (name[0] == 'c' && name[1] == 'p' && name[2] == 'u' && name[3] == '@')
                ncpus++;
            p += (n + 4) & ~3u;
        } else if (token == 3) {
            uint32_t len = be32(p);
            const char *pname = strings + be32(p + 4);
            const char *val = (const char *)p + 8;
            if (streq(pname, "compatible") && list_has(val, len, "arm,gic-v3"))
                v3 = 1;
            if (streq(pname, "method") && streq(val, "smc"))
                psci_smc = 1;
            p += 8 + ((len + 3) & ~3u);
        } else if (token == 2 || token == 4) {
        } else {
            break;
        }
    }
    if (ncpus > MAX_CPUS)
        ncpus = MAX_CPUS;
}

/* ---- GIC ------------------------------------------------------------------------------- */

static void w32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static uint32_t r32(uint64_t a) { return *(volatile uint32_t *)a; }
static void w8(uint64_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static void w64(uint64_t a, uint64_t v) { *(volatile uint64_t *)a = v; }

static uint64_t cpu_index(void)
{
    uint64_t mpidr;
    asm volatile("mrs %0, mpidr_el1" : "=r"(mpidr));
    return mpidr & 0xf;
}

/* Where the per-IRQ registers of ``intid`` live for this CPU: redistributor or distributor. */
static uint64_t bank(uint32_t intid)
{
    return v3 && intid < 32 ? GICR + cpu_index() * 0x20000 + GICR_SGI : GICD;
}

static void enable(uint32_t intid) { w32(bank(intid) + 0x100 + intid / 32 * 4, 1u << (intid % 32)); }
static void pend(uint32_t intid) { w32(bank(intid) + 0x200 + intid / 32 * 4, 1u << (intid % 32)); }
static int is_pending(uint32_t intid) { return r32(bank(intid) + 0x200 + intid / 32 * 4) >> (intid % 32) & 1; }
static int is_active(uint32_t intid) { return r32(bank(intid) + 0x300 + intid / 32 * 4) >> (intid % 32) & 1; }
static void priority(uint32_t intid, uint8_t prio) { w8(bank(intid) + 0x400 + intid, prio); }

static void edge(uint32_t intid)
{
    uint64_t a = bank(intid) + 0xc00 + intid / 16 * 4;
    w32(a, r32(a) | 2u << (intid % 16 * 2));
}

static uint32_t ack(void)
{
    uint64_t v;
    if (v3)
        asm volatile("mrs %0, s3_0_c12_c12_0" : "=r"(v));   /* ICC_IAR1_EL1 */
    else
        v = r32(GICC + 0x0c);
    return (uint32_t)v;
}

static void eoi(uint32_t iar)
{
    if (v3)
        asm volatile("msr s3_0_c12_c12_1, %0" : : "r"((uint64_t)iar));   /* ICC_EOIR1_EL1 */
    else
        w32(GICC + 0x10, iar);
}

static void send_sgi(uint64_t target, uint32_t intid)
{
    if (v3)
        asm volatile("msr s3_0_c12_c11_5, %0" : : "r"((uint64_t)intid << 24 | 1ull << target));
    else
        w32(GICD + 0xf00, 1u << (16 + target) | intid);
    asm volatile("isb");
}

static void dist_init(void)
{
    if (v3) {
        w32(GICD, 1u << 4 | 1u << 1);                       /* ARE, EnableGrp1 */
        while (r32(GICD) & (1u << 31))
            ;
        for (uint32_t i = 1; i < 8; i++)
            w32(GICD + 0x80 + i * 4, 0xffffffffu);          /* SPIs: Group 1 */
        for (uint32_t i = 32; i < 64; i++)
            w64(GICD + 0x6000 + i * 8, 0);                  /* to CPU 0 */
    } else {
        w32(GICD, 1);
        for (uint32_t i = 32; i < 64; i++)
            w8(GICD + 0x800 + i, 1);                        /* to CPU 0 */
    }
    for (uint32_t i = 32; i < 64; i++)
        priority(i, 0x80);
}

static void cpu_init(void)
{
    if (v3) {
        uint64_t rd = GICR + cpu_index() * 0x20000;
        w32(rd + 0x14, r32(rd + 0x14) & ~2u);               /* WAKER.ProcessorSleep */
        while (r32(rd + 0x14) & 4u)
            ;
        w32(rd + GICR_SGI + 0x80, 0xffffffffu);             /* SGIs, PPIs: Group 1 */
        uint64_t sre;
        asm volatile("mrs %0, s3_0_c12_c12_5" : "=r"(sre));
        asm volatile("msr s3_0_c12_c12_5, %0; isb" : : "r"(sre | 1));
        asm volatile("msr s3_0_c4_c6_0, %0" : : "r"(0xffull));     /* PMR */
        asm volatile("msr s3_0_c12_c12_3, %0" : : "r"(0ull));      /* BPR1 */
        asm volatile("msr s3_0_c12_c12_7, %0; isb" : : "r"(1ull)); /* IGRPEN1 */
    } else {
        w32(GICC + 0x04, 0xff);                             /* PMR */
        w32(GICC + 0x08, 0);                                /* BPR */
        w32(GICC + 0x00, 1);
    }
    for (uint32_t i = 0; i < 32; i++)
        priority(i, 0x80);
    enable(SGI_PASS);
    enable(SGI_OFF);
}

static void irq_on(void) { asm volatile("msr daifclr, #2" ::: "memory"); }
static void irq_off(void) { asm volatile("msr daifset, #2" ::: "memory"); }
static void wfi(void) { asm volatile("wfi" ::: "memory"); }

static uint64_t cntvct(void)
{
    uint64_t v;
    asm volatile("isb; mrs %0, cntvct_el0" : "=r"(v));
    return v;
}

static void timer_arm(uint64_t ticks_ahead)
{
    deadline = cntvct() + ticks_ahead;
    asm volatile("msr cntv_cval_el0, %0; msr cntv_ctl_el0, %1; isb" : : "r"(deadline), "r"(1ull));
}

static void timer_mask(void) { asm volatile("msr cntv_ctl_el0, %0; isb" : : "r"(3ull)); }

/* ---- the handler ------------------------------------------------------------------------ */

static int level_mode;

void irq_handler(void)
{
    uint32_t iar = ack();
    uint32_t intid = iar & 0x3ff;
    uint64_t me = cpu_index();
    if (intid == PPI_VTIMER) {
        if (cntvct() < deadline)
            late = 1;
        if (level_mode && ++level_hits < 3) {
            eoi(iar);                   /* the timer still asserts: it comes back */
            return;
        }
        ticks++;
        timer_mask();
    } else if (intid == SPI_EDGE) {
        edge_hits++;
    } else if (intid == SPI_ACTIVE) {
        if (active_hits++ == 0) {
            active_seen = is_active(SPI_ACTIVE);
            pend(SPI_ACTIVE);
            irq_on();                   /* active and pending: not taken again yet */
            for (volatile int i = 0; i < 1000; i++)
                ;
            irq_off();
            active_seen &= is_pending(SPI_ACTIVE) && active_hits == 1;
        }
    } else if (intid == SPI_LOW) {
        order[norder++] = SPI_LOW;
        pend(SPI_LOWER);
        pend(SPI_HIGH);
        irq_on();
        for (volatile int i = 0; i < 1000; i++)
            ;
        irq_off();
        order[norder++] = -SPI_LOW;
    } else if (intid == SPI_HIGH || intid == SPI_LOWER) {
        order[norder++] = (int)intid;
    } else if (intid == SGI_PASS) {
        if (me == 0)
            laps++;
        if (me != 0 || laps < 3)
            send_sgi((me + 1) % (uint64_t)ncpus, SGI_PASS);
    } else if (intid == SGI_OFF) {
        eoi(iar);
        psci(PSCI_CPU_OFF, 0, 0, 0);
    } else if (intid >= 1020) {
        return;                         /* spurious */
    }
    eoi(iar);
}

void unexpected_exception(void)
{
    puts_("unexpected exception\n");
    psci(PSCI_SYSTEM_OFF, 0, 0, 0);
}

void secondary_main(uint64_t index)
{
    cpu_init();
    online[index] = 1;
    irq_on();
    for (;;)
        wfi();
}

void boot_main(const uint8_t *fdt)
{
    if (!fdt)
        fdt = (const uint8_t *)0x40000000;      /* bare-metal ELF: DTB at the start of RAM */
    parse_fdt(fdt);
    puts_("gic_test: GICv");
    putdec(v3 ? 3 : 2);
    puts_(", ");
    putdec((uint64_t)ncpus);
    puts_(" cpus\n");
    dist_init();
    cpu_init();

    /* timer: a WFI loop with IRQs unmasked, woken by the tick */
    enable(PPI_VTIMER);
    timer_arm(10000);
    irq_on();
    while (!ticks)
        wfi();
    irq_off();
    puts_(late ? "timer: taken before its deadline\n" : "timer: PPI 27 taken after its deadline\n");

    /* wfi: masked, the pending interrupt still ends the WFI */
    timer_arm(10000);
    wfi();
    int woke = ticks == 1 && cntvct() >= deadline && is_pending(PPI_VTIMER);
    irq_on();
    while (ticks < 2)
        wfi();
    irq_off();
    puts_(woke ? "wfi: woken by a pending, masked interrupt, taken once unmasked\n" : "wfi: FAILED\n");

    /* level: the handler EOIs without masking the timer, twice */
    level_mode = 1;
    timer_arm(1000);
    irq_on();
    while (ticks < 3)
        wfi();
    irq_off();
    level_mode = 0;
    puts_("level: PPI 27 taken ");
    putdec((uint64_t)level_hits);
    puts_(" times while asserted\n");

    /* edge: pended once, taken once */
    edge(SPI_EDGE);
    enable(SPI_EDGE);
    pend(SPI_EDGE);
    irq_on();
    for (volatile int i = 0; i < 1000; i++)
        ;
    irq_off();
    puts_("edge: SPI 41 taken ");
    putdec((uint64_t)edge_hits);
    puts_(edge_hits == 1 ? " time\n" : " times\n");

    /* active: active in its handler, pending again, taken again after the EOI */
    enable(SPI_ACTIVE);
    pend(SPI_ACTIVE);
    irq_on();
    for (volatile int i = 0; i < 1000; i++)
        ;
    irq_off();
    puts_(active_seen && active_hits == 2 ? "active: SPI 40 active in its handler, pending again, taken after EOI\n"
                                          : "active: FAILED\n");

    /* preemption: 43 (0x20) preempts 42 (0xa0); 44 (0xc0) waits */
    priority(SPI_LOW, 0xa0);
    priority(SPI_HIGH, 0x20);
    priority(SPI_LOWER, 0xc0);
    enable(SPI_LOW);
    enable(SPI_HIGH);
    enable(SPI_LOWER);
    pend(SPI_LOW);
    irq_on();
    for (volatile int i = 0; i < 1000; i++)
        ;
    irq_off();
    int nested = norder == 4 && order[0] == SPI_LOW && order[1] == SPI_HIGH && order[2] == -SPI_LOW &&
                 order[3] == SPI_LOWER;
    puts_(nested ? "preemption: SPI 43 inside SPI 42's handler, SPI 44 after it\n" : "preemption: FAILED\n");

    /* sgi: bring the others up, then three laps of SGI 1 */
    for (int i = 1; i < ncpus; i++) {
        psci(PSCI_CPU_ON64, (uint64_t)i, (uint64_t)secondary_entry, (uint64_t)i);
        while (!online[i])
            asm volatile("yield" ::: "memory");   /* lets a single-threaded QEMU run the others */
    }
    irq_on();
    if (ncpus > 1) {
        send_sgi(1, SGI_PASS);
        while (laps < 3)
            wfi();
    }
    irq_off();
    puts_("sgi: ");
    putdec((uint64_t)(ncpus > 1 ? laps : 0));
    puts_(" laps through ");
    putdec((uint64_t)ncpus);
    puts_(" cpus\n");

    for (int i = 1; i < ncpus; i++) {
        send_sgi((uint64_t)i, SGI_OFF);
        while (psci(PSCI_AFFINITY_INFO64, (uint64_t)i, 0, 0) != 1)
            asm volatile("yield" ::: "memory");   /* without it, QEMU's round-robin TCG never
                                                     schedules the CPU that must turn off */
    }
    puts_("all done, system off\n");
    psci(PSCI_SYSTEM_OFF, 0, 0, 0);
}
