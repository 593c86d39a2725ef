// Latest wins: at most one request in flight; while it runs, newer values
// replace each other and only the last one is sent when it returns. A
// slider dragged through 50 values therefore costs the kernel two or three
// runs, never a queue of stale ones, and the last run is always the final
// value's.

export class LatestOnly<T> {
  private pending: { value: T } | null = null;
  private running = false;
  private disposed = false;

  constructor(
    private readonly run: (value: T) => Promise<unknown>,
    private readonly onError: (err: unknown) => void = () => {},
    private readonly onIdle: () => void = () => {},
  ) {}

  /** True while a value is being run or waits to be. */
  get busy(): boolean {
    return this.running || this.pending !== null;
  }

  submit(value: T): void {
    if (this.disposed) return;
    this.pending = { value };
    this.pump();
  }

  dispose(): void {
    this.disposed = true;
    this.pending = null;
  }

  private pump(): void {
    if (this.running || this.pending === null || this.disposed) return;
    const { value } = this.pending;
    this.pending = null;
    this.running = true;
    let settled: Promise<unknown>;
    try {
      settled = Promise.resolve(this.run(value));
    } catch (err) {
      settled = Promise.reject(err);
    }
    settled.catch((err) => this.onError(err)).finally(() => {
      this.running = false;
      this.pump();
      if (!this.busy && !this.disposed) this.onIdle();
    });
  }
}
