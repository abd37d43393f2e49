// test-case-name: tests.test_bundled_filters_unit
//
// The wasmgate filter SDK: import what you need from "../sdk".

export * from "./json";
export * from "./view";
export * from "./writer";
export * from "./base64";
export * from "./bytes";
export * from "./duration";
export * from "./host";
export * from "./abi";
export * from "./abort";
