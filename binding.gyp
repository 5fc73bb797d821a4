{
  "targets": [
    {
      "target_name": "userfault",
      "sources": ["native/userfault.c", "native/kvm.c", "native/crc32c.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
