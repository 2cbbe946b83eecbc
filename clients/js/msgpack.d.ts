export declare function encode(value: unknown): Uint8Array;
export declare function decode(data: Uint8Array | ArrayBuffer): unknown;
