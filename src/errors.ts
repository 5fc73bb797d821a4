// The root of every error this library throws. One base class, a subclass per
// condition (in the module that owns it), a stable `code` a caller can switch
// on, the data needed to recover as fields, and `cause` passed at
// construction. Messages are for people: they never carry the code (a CLI
// prints it beside the message). Nothing here loads the native addon, so the
// pure codecs (snapshot format, uffd messages) can use it on any machine.
export class UserfaultError extends Error {
  readonly code: string = 'EUSERFAULT';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}
